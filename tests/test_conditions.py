"""Condition images, the step hook and sampler choice."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from lib_layerdiffuse.engine import (
    broadcast_condition,
    condition_latents,
    control_pixels,
    fit_image,
    make_scheduler,
    prepare_condition,
    stop_timestep,
)
from lib_layerdiffuse.engine.unet_hook import UNetStepHook
from lib_layerdiffuse.methods import Method
from lib_layerdiffuse.testing.models import tiny_vae


def gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([x / (w - 1), y / (h - 1), np.full_like(x, 0.25)], axis=-1)


def test_just_resize_stretches():
    out = fit_image(gradient(30, 60), 40, 40, "Just Resize")
    assert out.shape == (40, 40, 3)
    assert out[:, 0, 0].max() < 0.05 and out[:, -1, 0].min() > 0.95  # whole width kept


def test_crop_and_resize_keeps_the_centre():
    out = fit_image(gradient(30, 60), 40, 40, "Crop and Resize")
    assert out.shape == (40, 40, 3)
    assert 0.2 < out[:, 0, 0].mean() < 0.3 and 0.7 < out[:, -1, 0].mean() < 0.8  # sides cut off
    assert out[0, :, 1].max() < 0.05 and out[-1, :, 1].min() > 0.95  # full height kept


def test_resize_and_fill_pads_with_the_median_border_colour():
    img = np.full((20, 40, 3), 0.8, np.float32)
    img[:, :3] = 0.1  # a thin dark edge does not win the median
    out = fit_image(img, 40, 40, 2)
    assert out.shape == (40, 40, 3)
    assert np.allclose(out[:5], 0.8) and np.allclose(out[-5:], 0.8)


def test_shrinking_averages_and_enlarging_stays_in_range():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[..., None].repeat(3, -1)
    assert np.allclose(fit_image(checker, 32, 32, "Just Resize"), 0.5, atol=1e-5)  # area filter
    up = fit_image(checker[:8, :8], 64, 64, "Just Resize")
    assert up.min() >= 0.0 and up.max() <= 1.0


def test_condition_is_flattened_over_grey():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, ..., 3] = 255
    out = prepare_condition(rgba, 8, 8)
    assert np.allclose(out[0, 0], [1, 0, 0]) and np.allclose(out[7, 0], [0.5, 0.5, 0.5])
    assert control_pixels(rgba, 8, 8).shape == (1, 3, 8, 8)
    assert torch.allclose(control_pixels(rgba, 8, 8)[0, :, 7, 0], torch.zeros(3))


def test_condition_latents_are_the_scaled_vae_mean():
    vae = tiny_vae("sdxl")
    rgba = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    latents = condition_latents(vae, [rgba], 64, 64)
    x = torch.from_numpy(prepare_condition(rgba, 64, 64).transpose(2, 0, 1)[None].copy()) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * 0.13025
    assert latents.shape == (1, 4, 8, 8) and torch.allclose(latents, expected, atol=1e-6)


def test_stop_timestep_matches_forge_percent_to_sigma():
    assert stop_timestep(1.0) == -math.inf and stop_timestep(0.0) == math.inf
    assert stop_timestep(0.5) == pytest.approx(499.5)
    assert stop_timestep(0.25, 1000) == pytest.approx(749.25)


def test_condition_broadcasts_over_cfg_and_batch():
    cond = torch.arange(2.0).view(2, 1, 1, 1)
    assert broadcast_condition(cond[:1], 6).shape[0] == 6
    assert broadcast_condition(cond, 4).flatten().tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="cannot spread 2"):
        broadcast_condition(cond, 3)


def test_step_hook_concatenates_then_stops_once():
    class Recorder(torch.nn.Module):
        def forward(self, sample, timestep):
            seen.append(sample.shape[1])
            return sample

    seen, stops = [], []
    unet = Recorder()
    cond = torch.ones(1, 4, 2, 2)
    with UNetStepHook(unet, cond, stop_below=500, on_stop=lambda: stops.append(1)) as hook:
        for t in (900, 600, 400, 100):
            unet(torch.zeros(2, 4, 2, 2), torch.tensor([t, t]))
        unet(sample=torch.zeros(2, 4, 2, 2), timestep=torch.tensor(50))
    assert seen == [8, 8, 4, 4, 4]
    assert hook.calls_active == 2 and hook.calls_stopped == 3 and stops == [1]
    assert not unet._forward_pre_hooks


def test_samplers_keep_the_noise_schedule_and_warn_for_dpm_on_blend_to_layer():
    from lib_layerdiffuse.testing.pipelines import tiny_scheduler

    base = tiny_scheduler().config
    karras = make_scheduler("dpm++ 2m karras", base)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler" and karras.config.use_karras_sigmas
    assert karras.config.beta_schedule == "scaled_linear" and karras.config.beta_end == 0.012
    assert type(make_scheduler("Euler a", karras.config)).__name__ == "EulerAncestralDiscreteScheduler"
    with pytest.warns(UserWarning, match="DPM samplers"):
        make_scheduler("DPM++ 2M", base, Method.BG_BLEND_TO_FG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_scheduler("UniPC", base, Method.BG_BLEND_TO_FG)
    with pytest.raises(ValueError, match="unknown sampler 'LMS'"):
        make_scheduler("LMS", base)
