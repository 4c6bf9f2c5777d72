"""The command line, the Forge install/preload files, and import hygiene of the library."""

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import tomllib

from lib_layerdiffuse.cli import main
from lib_layerdiffuse.weights import CATALOG

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env_dir):
    env = dict(os.environ, LAYERDIFFUSE_MODELS_DIR=str(env_dir))
    return subprocess.run([sys.executable, "-m", "lib_layerdiffuse", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def last_line_printed(code: str) -> str:
    """What a fresh Python process running `code` prints last."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_main_job_lists_methods_and_every_file_state(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "vae_transparent_encoder.safetensors").write_bytes(b"not the real file")
    (folder / "layer_xl_fg2ble.safetensors.part").write_bytes(b"x" * 10)
    res = run_cli(env_dir=folder)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert str(folder) in out and "LAYERDIFFUSE_MODELS_DIR" in out
    from lib_layerdiffuse.methods import Method
    for m in Method:
        assert m.value in out and m.name in out
    for name in CATALOG:
        assert name in out
    assert "present (not verified yet)" in out and "partial download" in out
    assert out.count("missing") >= 12
    assert CATALOG["vae_transparent_decoder.safetensors"].url in out
    assert str(folder / "vae_transparent_decoder.safetensors") in out

    res = run_cli("status", "--verify", "-q", env_dir=folder)
    assert res.returncode == 1  # a corrupt file is a failure worth a non-zero exit
    assert "corrupt" in res.stdout and CATALOG["vae_transparent_encoder.safetensors"].sha256 in res.stdout


def test_download_command_reports_offline_failures(tmp_path, monkeypatch, capsys):
    from lib_layerdiffuse.testing.file_server import FileServer

    with FileServer({}) as srv:
        endpoint = srv.base_url
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    code = main(["download", "--models-dir", str(tmp_path), "-q", "--method", "FG_TO_BLEND"])
    err = capsys.readouterr().err
    assert code == 1
    assert "layer_xl_fg2ble.safetensors" in err and str(tmp_path / "layer_xl_fg2ble.safetensors") in err
    assert "Traceback" not in err


def test_cli_bad_method_is_a_clean_error(tmp_path, capsys):
    assert main(["download", "--models-dir", str(tmp_path), "--method", "nonsense"]) == 2
    assert "unknown LayerDiffuse method" in capsys.readouterr().err


def test_library_imports_no_ui_or_host_modules():
    code = (
        "import sys, pkgutil, importlib, lib_layerdiffuse\n"
        "for m in pkgutil.walk_packages(lib_layerdiffuse.__path__, 'lib_layerdiffuse.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('gradio', 'rembg', 'onnxruntime', 'modules', 'modules_forge', 'ldm_patched', 'backend')]\n"
        "print(bad)\n")
    assert last_line_printed(code) == "[]"


def test_preload_adds_the_models_dir_flag():
    spec = importlib.util.spec_from_file_location("ld_preload", ROOT / "preload.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parser = argparse.ArgumentParser()
    mod.preload(parser)
    assert parser.parse_args(["--layerdiffuse-models-dir", "/x"]).layerdiffuse_models_dir == "/x"
    assert parser.parse_args([]).layerdiffuse_models_dir is None


def run_install(tmp_path, absent: tuple) -> list[str]:
    """Run install.py under a fake Forge `launch` module where only `absent` is not installed.
    Its `run_pip` does what Forge's does: it pastes the command into a shell line after
    `python -m pip`; here a recorder stands in for pip. Returns the argument lists pip got."""
    log, recorder, cwd = tmp_path / "pip.log", tmp_path / "pip_recorder.py", tmp_path / "forge"
    cwd.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    recorder.write_text("import json, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (tmp_path / "launch.py").write_text(
        "import subprocess, sys\n"
        "def is_installed(name):\n"
        f"    return name not in {absent!r}\n"
        "def run_pip(command, desc):\n"
        f"    line = f'\"{{sys.executable}}\" {recorder} {{command}} --prefer-binary'\n"
        f"    subprocess.run(line, shell=True, check=True, cwd={str(cwd)!r})\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    res = subprocess.run([sys.executable, str(ROOT / "install.py")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert not list(cwd.iterdir()), "the pip command line wrote files into Forge's folder"
    lines = log.read_text().splitlines() if log.exists() else []
    return [" ".join(json.loads(line)[:-1]) for line in lines]


def test_install_py_installs_only_missing_and_never_host_pinned(tmp_path):
    assert run_install(tmp_path, ("diffusers", "tqdm")) == ["install diffusers>=0.25 tqdm>=4.60"]


def test_install_py_mirrors_pyproject_without_host_pinned_packages():
    spec = importlib.util.spec_from_file_location("ld_install", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in deps}
    expected = {k: v for k, v in by_name.items() if k not in mod.HOST_PINNED}
    assert mod.REQUIREMENTS == expected
    assert set(by_name) - set(expected) == set(mod.HOST_PINNED) - {"gradio"}


def test_install_py_asks_only_for_what_this_python_needs():
    spec = importlib.util.spec_from_file_location("ld_install", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    wanted = mod.missing(lambda name: False)
    assert ("tomli>=1.1; python_version < '3.11'" in wanted) == (sys.version_info < (3, 11))
    assert "tqdm>=4.60" in wanted
    assert mod.missing(lambda name: True) == []


def test_install_py_gives_pip_requirements_without_their_markers():
    spec = importlib.util.spec_from_file_location("ld_install", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.pip_commands(["tomli>=1.1; python_version < '3.11'", "--no-deps rembg", "tqdm>=4.60"]) == [
        ["install", "tomli>=1.1", "tqdm>=4.60"], ["install", "--no-deps", "rembg"]]
    assert mod.pip_commands([]) == []


def test_install_py_adds_the_cutout_packages_without_their_pins(tmp_path):
    rembg = "rembg==2.0.69" if sys.version_info < (3, 11) else "rembg"
    # onnxruntime-gpu counts as onnxruntime: a second build would break the first
    assert run_install(tmp_path, ("rembg", "onnxruntime", "pymatting")) == [
        "install pymatting>=1.1.10", f"install --no-deps {rembg}"]
    # everything missing: one pip run with dependencies, one without (rembg's own pins)
    assert len(run_install(tmp_path, ("rembg", "onnxruntime", "pymatting", "pooch", "diffusers"))) == 2


def test_install_py_repairs_early_forges_diffusers_when_the_hub_is_too_new(tmp_path):
    """Early Forge pins diffusers 0.25.0; with a hub from 0.26 on, importing it fails on
    `cached_download`, and install.py then asks for an older hub (and nothing else)."""
    package = tmp_path / "diffusers"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'cached_download' from 'huggingface_hub'\")\n")
    assert run_install(tmp_path, ()) == ["install huggingface_hub<0.26"]
    (package / "__init__.py").write_text("")
    assert run_install(tmp_path, ()) == []


def test_download_offline_lists_what_is_missing_without_downloading(tmp_path, capsys):
    code = main(["download", "--method", "FG_ONLY_ATTN", "--offline", "--models-dir", str(tmp_path), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "unrecognized arguments" not in err and "downloading is switched off" in err
    for name in ("layer_xl_transparent_attn.safetensors", "vae_transparent_decoder.safetensors"):
        assert CATALOG[name].url in err and str(tmp_path / name) in err
    assert not list(tmp_path.iterdir())  # nothing fetched, not even a partial file


def test_a_command_with_an_unknown_flag_shows_its_own_usage(capsys):
    import pytest

    with pytest.raises(SystemExit) as exited:
        main(["status", "--bogus"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("usage: python -m lib_layerdiffuse status") and "unrecognized arguments: --bogus" in err


def test_every_command_has_a_description(capsys):
    import pytest

    for command in ("status", "download", "generate", "cutout", "replace-bg", "app"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        description = text.split("\n\n")[1]
        assert not description.startswith(("positional arguments", "options")), command


def test_status_says_how_many_files_are_needed_and_present(tmp_path, capsys):
    assert main(["status", "--models-dir", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "3 files needed, 0 present" in out and "needs 3 of 3" not in out


def test_help_imports_no_heavy_modules():
    """`--help` answers at once: torch, diffusers, gradio and the cutout libraries load only in
    the commands that use them."""
    code = ("import sys\n"
            "from lib_layerdiffuse.cli import main\n"
            "for argv in (['--help'], ['cutout', '--help'], ['generate', '--help'], ['app', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = ('torch', 'diffusers', 'transformers', 'gradio', 'rembg', 'onnxruntime', 'scipy', 'pymatting')\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & set(heavy)))\n")
    assert last_line_printed(code) == "[]"


def test_a_weight_free_cutout_never_imports_torch():
    code = ("import sys\n"
            "from lib_layerdiffuse.cutout import cut_out\n"
            "from lib_layerdiffuse.testing.composites import synthetic_case\n"
            "cut_out(synthetic_case('disc', 'solid', 64).image, model='weight-free').render()\n"
            "print('torch' in sys.modules)\n")
    assert last_line_printed(code) == "False"
