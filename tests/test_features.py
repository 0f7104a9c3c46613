"""pipeline.stages.features: the feature-space registry, its entries, and the checks made on registration."""
from dataclasses import replace

import pytest

from pipeline.stages import classifier, features
from pipeline.util.errors import FIDError
from pipeline.stages.feature_inputs import ImageSet
from pipeline.stages.features import FEATURE_SPACES, FeatureSpace, feature_space, register


def test_the_registered_spaces():
    assert list(FEATURE_SPACES) == ["inception", "classifier", "exact"]
    assert [n for n, s in FEATURE_SPACES.items() if s.comparable_to_papers] == ["inception"]
    assert features.spaces_for("images") == ["inception", "classifier"] and features.spaces_for("gaussian") == ["exact"]
    inception = feature_space("inception")
    assert (inception.extractor, inception.layer, inception.dim) == ("inception-v3-compat", "2048", 2048)
    clf = feature_space("classifier")
    assert (clf.extractor, clf.layer, clf.own_classifier) == (classifier.EXTRACTOR_NAME, classifier.FEATURE_LAYER, True)
    exact = feature_space("exact")
    assert exact.closed_form is not None and exact.layer is None and exact.weights is None


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(FIDError, match=r"'dino' is not a feature space; known: \['inception', 'classifier', 'exact'\]"):
        feature_space("dino")


@pytest.mark.parametrize("change,match", [
    ({"name": "inception"}, "already registered"),
    ({"name": " x"}, "outer spaces"),
    ({"data": "audio"}, "data 'audio'"),
    ({"layer": None}, "exactly one of layer"),
    ({"closed_form": lambda x, m: (0.0, {}, "")}, "exactly one of layer"),
    ({"dim": 0}, "dim 0"),
    ({"comparable_to_papers": "yes"}, "comparable_to_papers"),
    ({"adapt": "no-colon"}, "must be 'module:function'"),
    ({"adapt": 3}, "adapt and weights must be callables"),
])
def test_registration_refuses_an_entry_that_cannot_work(change, match):
    good = FeatureSpace("new-space", data="images", adapt=ImageSet, comparable_to_papers=False,
                        extractor="inception-v3-compat", layer="768")
    with pytest.raises(ValueError, match=match):
        register(replace(good, **change))
    assert "new-space" not in FEATURE_SPACES


@pytest.mark.parametrize("change,match", [
    ({"extractor": "no-such-net"}, "not a torch-fidelity feature extractor"),
    ({"layer": "4096"}, "has no layer '4096'"),
])
def test_the_extractor_is_checked_against_torch_fidelity_before_first_use(change, match):
    """Registration stays cheap (no torch-fidelity import); the extractor half is checked on first use."""
    good = FeatureSpace("new-space", data="images", adapt=ImageSet, comparable_to_papers=False,
                        extractor="inception-v3-compat", layer="768")
    features.check_extractor(good)
    with pytest.raises(ValueError, match=match):
        features.check_extractor(replace(good, **change))


def test_the_exact_space_and_classifier_training_never_import_torch_fidelity():
    import subprocess
    import sys

    code = ("import sys; from pipeline.stages import fid, classifier, features; "
            "features.check_extractor(features.feature_space('exact')); "
            "print('torch_fidelity' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_reading_the_registry_imports_neither_torch_nor_torch_fidelity():
    """Config validation and the DAG read the registry; only a space's first use loads its code."""
    import subprocess
    import sys

    code = ("import sys; from pipeline.stages import features; features.reference_spaces(); "
            "print('torch' in sys.modules, 'torch_fidelity' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_an_entry_given_by_reference_runs_that_function_on_first_call():
    space = feature_space("exact")
    assert isinstance(space.adapt, features.Lazy) and space.adapt.ref == "pipeline.stages.feature_inputs:float64"
    assert space.adapt([[1, 2]]).dtype == __import__("torch").float64
