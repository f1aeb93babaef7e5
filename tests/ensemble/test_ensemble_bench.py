"""bench/ensemble.py runs on CPU, writes its JSON, and needs nothing beyond torch + numpy."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ensemble.py"


def test_bench_runs_on_cpu_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_ensemble", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    assert mod.main(["--device", "cpu", "--batches", "1", "2", "--repeats", "1", "--warmup", "0",
                     "--size", "16", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["batch"] for r in data["results"]] == [1, 2]
    assert 1.4e9 < data["flops_per_crop"] * 8 < 1.7e9  # 16^3 crops: 1/8 of the 32^3 ensemble's FLOPs
    for r in data["results"]:
        assert r["naive"]["crops_per_s"] > 0 and r["engine"]["crops_per_s"] > 0
        assert r["max_abs_diff_proba"] < 1e-5
    assert "batch" in capsys.readouterr().out


def test_bench_imports_only_torch_and_numpy():
    code = (f"import runpy, sys; sys.argv=['x','--help']\n"
            f"try:\n    runpy.run_path({str(BENCH)!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('sklearn','safetensors','SimpleITK','scipy',"
            "'pylidc','nni','grpc','captum','pydicom')]\nprint(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
