"""The one checkpoint reader both engines use: restricted unpickling (inert or refusing) and weight-norm folding."""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from app.engines.checkpoints import (
    INERT, REFUSE, Inert, ModuleTensorsUnpickler, NumpyArraysUnpickler, RestrictedUnpickler, fold_weight_norm,
    read_module_tensors, read_state_pickle,
)


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/should-not-exist",))


def test_inert_mode_instantiates_no_class():
    loaded = ModuleTensorsUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()
    assert isinstance(loaded, Inert)


def test_refuse_mode_names_the_class_it_refuses():
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system|refusing to load os.system"):
        NumpyArraysUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="others='maybe'"):
        RestrictedUnpickler.configured(frozenset(), "maybe")
    assert ModuleTensorsUnpickler.others == INERT and NumpyArraysUnpickler.others == REFUSE


def test_a_whole_pickled_module_gives_its_tensors_by_name(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    torch.save(module, tmp_path / "module.pt")  # what ttskit ships: the whole module pickled
    tensors = read_module_tensors(str(tmp_path / "module.pt"))
    expected = module.state_dict()
    assert set(tensors) == set(expected)
    for key, value in tensors.items():
        torch.testing.assert_close(value, expected[key])


def test_state_pickles_torch_and_legacy_numpy():
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.arange(6.0).view(2, 3)}}, buffer)
    assert torch.equal(read_state_pickle(buffer.getvalue())["model"]["w"], torch.arange(6.0).view(2, 3))
    legacy = pickle.dumps({"fsnet": OrderedDict(w=np.arange(4, dtype=np.float32))})  # an old KAN-TTS numpy pickle
    assert torch.equal(read_state_pickle(legacy)["fsnet"]["w"], torch.arange(4, dtype=torch.float32))
    with pytest.raises(Exception):
        read_state_pickle(pickle.dumps(Evil()))  # neither loader builds os.system
    with pytest.raises(Exception):
        read_state_pickle(b"garbage")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_weight_norm_folding_matches_torch_in_both_spellings():
    old = torch.nn.utils.weight_norm(torch.nn.ConvTranspose1d(4, 3, 5, 2))
    new = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(3, 5, 7))
    for conv in (old, new):
        with torch.no_grad():
            for name, p in conv.named_parameters():
                if name.endswith(("weight_g", "original0")):
                    p.mul_(1.7)  # g != |v|: a wrong fold shows
        state = {k: v.detach() for k, v in conv.state_dict().items()}
        g, v = (state.get(k) for k in ("weight_g", "weight_v")) if "weight_g" in state else (
            state["parametrizations.weight.original0"], state["parametrizations.weight.original1"])
        folded = fold_weight_norm(state)
        assert set(folded) == {"weight", "bias"}
        torch.testing.assert_close(folded["weight"], torch._weight_norm(v, g, 0))  # torch's own weight-norm function
