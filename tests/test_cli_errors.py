"""The command line refuses bad input at once, in plain words, before torch or a model loads."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lib_layerdiffuse.cli import main


@pytest.mark.parametrize("flags, said", [
    (["--width", "1000", "--height", "77"], "argument --height: must be a positive multiple of 8 (pixels), got '77'; "
                                            "the nearest are 72 and 80"),
    (["--width", "-5"], "argument --width: must be a positive multiple of 8"),
    (["--batch", "0"], "argument --batch: must be a whole number of at least 1"),
    (["--steps", "two"], "argument --steps: must be a whole number of at least 1"),
    (["--strength", "0"], "argument --strength: must be a number over 0 up to 1, got '0'"),
    (["--strength", "1.5"], "argument --strength"),
    (["--weight", "3"], "argument --weight: must be a number from 0 to 2"),
    (["--stop-at", "-0.1"], "argument --stop-at: must be a number from 0 to 1"),
])
def test_generate_checks_numbers_when_it_parses_them(capsys, flags, said):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", "nobody/nothing", "--prompt", "x", *flags])
    assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("command, said", [
    (["cutout", "a.png", "-o", "out", "--fg-threshold", "300"], "--fg-threshold: must be a whole number from 1 to 255"),
    (["cutout", "a.png", "-o", "out", "--edge-band", "-1"], "--edge-band: must be a whole number from 0 to 64"),
    (["replace-bg", "a.png", "--background", "b.png", "--max-side", "100"], "--max-side: must be a positive multiple"),
])
def test_cutout_commands_check_numbers_when_they_parse_them(capsys, command, said):
    with pytest.raises(SystemExit):
        main(command)
    assert said in capsys.readouterr().err


def _run_without_torch(args: list[str], cwd) -> tuple[int, str, bool]:
    """(exit code, stderr, whether torch was imported) of the command line in a fresh process."""
    code = ("import sys; from lib_layerdiffuse.cli import main; rc = main(sys.argv[1:]); "
            "print('torch' in sys.modules, 'diffusers' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                         env={"PATH": "", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf"),
                              "LAYERDIFFUSE_MODELS_DIR": str(cwd / "models")})
    return out.returncode, out.stderr, "True" in out.stdout


def test_trivial_mistakes_are_reported_without_loading_torch(tmp_path):
    """[before: 10-13 s each, importing torch and diffusers first]"""
    (tmp_path / "bad.toml").write_text('model = "x"\n[[items]\n')
    (tmp_path / "fake.safetensors").write_bytes(b"\x00" * 4)
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    cases = [
        (["batch", "missing.toml"], "missing.toml: cannot read the job file"),
        (["batch", "bad.toml"], "bad.toml"),
        (["generate", "--model", "no/such/folder/", "--prompt", "x"], "there is no such folder on this machine"),
        (["generate", "--model", "fake.safetensors", "--prompt", "x"], "Download it again"),
        (["convert"], "TransparentVAE.pth is not there"),
        (["convert", "nowhere.pth"], "nowhere.pth is not there"),
        (["replace-bg", "photo.png", "-o", "x.png"], "give --prompt to generate a new background, or --background"),
    ]
    for args, said in cases:
        code, err, torch_loaded = _run_without_torch(args, tmp_path)
        assert code == 2 and said in err, (args, err)
        assert not torch_loaded, args
        assert "note:" not in err and "Traceback" not in err, (args, err)


def test_batch_with_a_hub_model_that_is_not_here_says_to_set_it_in_the_job_file(tmp_path, capsys):
    job = tmp_path / "job.toml"
    job.write_text('model = "someone/some-model"\nmethod = "FG_ONLY_ATTN"\n[[items]]\nprompt = "x"\n')
    assert main(["batch", str(job), "--offline", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"set `model` in the job file {job} to a local .safetensors checkpoint or diffusers folder" in err
    assert "--model" not in err  # batch has no such flag [before: "pass a local `--model ...`"]


def test_cli_cutout_pngs_carry_the_parameters_line_the_app_writes(tmp_path):
    image = np.full((96, 96, 3), (40, 120, 200), np.uint8)
    image[24:72, 24:72] = (230, 60, 40)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert main(["cutout", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--cutout-model",
                 "weight-free", "-q"]) == 0
    with Image.open(tmp_path / "out.png") as png:
        parameters, settings = png.text["parameters"], json.loads(png.text["layerdiffuse"])
    assert "Cutout model: weight-free" in parameters or "weight-free" in parameters
    assert all(str(v) in parameters for v in settings.values() if isinstance(v, (int, str)) and v != "")
