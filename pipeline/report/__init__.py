"""The report layer: run records, labels, tables, the published claims and their verdicts, and the
figures, from the records the stages wrote. Uses `pipeline.core` (intervals) and `pipeline.util`,
never a stage."""
