"""Training: the homogeneous model refines its backprojection start, the VAE's latent separates two states,
an interrupted run resumes exactly, a NaN loss stops with the last good checkpoint kept, and a checkpoint of other
particles is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreous.analysis.fsc import fsc_curve, resolution_at
from vitreous.errors import InputError
from vitreous.neural.data import ParticleBatches
from vitreous.neural.model import VAE, ModelConfig
from vitreous.neural.train import TrainOptions, TrainState, check_resumable, encode_all, initial_state, train
from vitreous.neural.trained import intensity_factor
from vitreous.reconstruct.backproject import backproject


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a state-1 particle scores above a state-0 one."""
    ranks = np.argsort(np.argsort(scores)) + 1
    n1, n0 = int(labels.sum()), int((1 - labels).sum())
    return float((ranks[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def test_homogeneous_model_improves_on_its_backprojection_start(one_state) -> None:
    data = ParticleBatches(one_state.particles)
    options = TrainOptions(epochs=3, batch_size=32)
    model, _ = train(data, initial_state(data, ModelConfig(data.box, 0), options), options)
    with torch.no_grad():
        field = model.decoder.volumes(None)[0] * intensity_factor(data.scale, data.box, data.original_box)
    truth = one_state.truth[0]
    frequency, fsc_field = fsc_curve(field, truth, data.pixel_size)
    _, fsc_bp = fsc_curve(backproject(one_state.particles).full, truth, data.pixel_size)
    assert resolution_at(frequency, fsc_field, 0.5) < resolution_at(frequency, fsc_bp, 0.5)


def test_latent_separates_two_states(two_states) -> None:
    data = ParticleBatches(two_states.particles)
    options = TrainOptions(epochs=4, batch_size=32)
    model, state = train(data, initial_state(data, ModelConfig(data.box, 1), options), options)
    z = encode_all(model, data)
    assert z.shape == (len(data), 1) and z.dtype == np.float32
    assert abs(_auc(z[:, 0], two_states.labels) - 0.5) > 0.45
    assert state.history[-1]["kl"] > 0.1  # the latent carries information (no posterior collapse)


def _short(**changes) -> TrainOptions:
    return TrainOptions(**{"epochs": 2, "batch_size": 100, **changes})


def test_resumed_training_equals_uninterrupted(two_states) -> None:
    data = ParticleBatches(two_states.particles)
    config = ModelConfig(data.box, 2, rank=4)
    start = initial_state(data, config, _short())
    _, straight = train(data, TrainState.from_dict(start.to_dict()), _short())
    saved: list[dict] = []
    _, first = train(data, TrainState.from_dict(start.to_dict()), _short(epochs=1), on_epoch=lambda s: saved.append(
        s.to_dict()))
    _, resumed = train(data, TrainState.from_dict(saved[-1]), _short())
    assert resumed.epoch == straight.epoch == 2
    for name, value in straight.model.items():
        assert torch.allclose(resumed.model[name], value, atol=1e-6), name


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(two_states, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ParticleBatches(two_states.particles)
    state = initial_state(data, ModelConfig(data.box, 2, rank=4), _short())
    real = VAE.forward
    calls = [0]

    def poisoned(self, batch, stochastic=True, eps=None):
        predicted, posterior = real(self, batch, stochastic, eps)
        calls[0] += 1
        return (predicted * torch.nan if calls[0] > 8 else predicted), posterior  # 6 batches per epoch

    monkeypatch.setattr(VAE, "forward", poisoned)
    saved: list[dict] = []
    with pytest.raises(InputError, match="loss became nan in epoch 2.*checkpoint of epoch 1 is kept"):
        train(data, state, _short(), on_epoch=lambda s: saved.append(s.to_dict()))
    assert [s["epoch"] for s in saved] == [1]
    assert all(torch.isfinite(v).all() for v in saved[0]["model"].values() if v.is_floating_point())


def test_checkpoint_of_other_particles_is_refused(two_states, one_state) -> None:
    state = initial_state(ParticleBatches(two_states.particles), ModelConfig(32, 1, rank=2), _short())
    with pytest.raises(InputError, match="different particles"):
        check_resumable(state, ParticleBatches(one_state.particles), "out")
