"""Every number is labelled with the hardware that made it."""


def test_cpu_records_name_the_cpu_model_where_the_system_tells_it(monkeypatch):
    """Every number's hardware label names the CPU model (docs: "a 2-core x86 CPU (model name)")."""
    from pipeline.util import provenance

    monkeypatch.setattr(provenance, "cpu_model", lambda: "Example CPU 9000")
    fp = provenance.fingerprint("cpu")
    assert fp["cpu_model"] == "Example CPU 9000"
    assert fp["device_name"] == f"CPU (Example CPU 9000, {fp['cpu']}, {fp['cpu_count']} cores)"
    monkeypatch.setattr(provenance, "cpu_model", lambda: None)
    assert provenance.fingerprint("cpu")["device_name"] == f"CPU ({fp['cpu']}, {fp['cpu_count']} cores)"
