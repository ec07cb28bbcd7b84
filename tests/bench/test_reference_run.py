"""bench/reference_run.py: the dry-run plans equal the seed's layout; its pure figures; a CPU smoke run."""

from __future__ import annotations

import pytest
import yaml

from tests.bench.scripts import load_script


def load_bench():
    return load_script("reference_run")


def test_dry_run_of_the_reference_manifest_is_the_seeds_eight_gpu_layout(tmp_path, capsys):
    bench = load_bench()
    out = bench.main(["--dry-run", "--workdir", str(tmp_path)])
    s = out["layout"]
    # ../shared/seed: 4 GPUs train at TP 2 x CP 2 with sequence parallel, 2 SGLang engines x TP 2 on the other 4.
    assert (s["trainer_gpus"], s["tp"], s["cp"], s["pp"], s["dp"]) == (4, 2, 2, 1, 1)
    assert s["sequence_parallel"] and not s["colocate"]
    assert (s["engines"], s["engine_tp"], s["rollout_gpus"], s["total_gpus"]) == (2, 2, 4, 8)
    assert s["trainer_bundles"] == [{"GPU": 1.0, "CPU": 1.0, "kuberl_trainer": 1.0}] * 4
    assert s["rollout_bundles"] == [{"GPU": 2.0, "CPU": 1.0, "kuberl_rollout": 2.0}] * 2
    assert (s["trainer_backend"], s["rollout_engine"]) == ("megatron", "sglang")
    spec = out["manifest"]["spec"]
    assert spec["rollout"]["batchSize"] == 32 and spec["rollout"]["nSamplesPerPrompt"] == 8
    assert spec["rollout"]["maxResponseLen"] == 8192 and spec["perf"]["maxTokensPerGpu"] == 4608
    assert spec["sglang"]["serverArgs"]["loadFormat"] == "dummy"
    assert spec["sglang"]["serverArgs"]["memFractionStatic"] == 0.8
    assert "eval" not in spec and spec["checkpoint"] == {} and spec["rollout"]["numRollout"] == 2
    printed = capsys.readouterr().out
    assert "TP 2 x CP 2 x PP 1 -> DP 1" in printed and "total: 8 GPUs" in printed
    assert "hack/gpu/reference_8gpu.sh" in printed
    assert not (tmp_path / "model").exists()  # a dry run starts and writes nothing


def test_two_gpu_plan_is_one_trainer_gpu_and_one_engine_gpu(tmp_path):
    out = load_bench().main(["--dry-run", "--scale", "2gpu", "--workdir", str(tmp_path)])
    s = out["layout"]
    assert (s["trainer_gpus"], s["tp"], s["cp"], s["dp"], s["engines"], s["engine_tp"], s["total_gpus"]) == (
        1, 1, 1, 1, 1, 1, 2)
    assert out["manifest"]["spec"]["model"]["architecture"] == "auto"
    assert out["preflight"] == []


def test_every_change_is_recorded_and_a_cp_override_is_labelled():
    bench = load_bench()
    base = yaml.safe_load(bench.DEFAULT_MANIFEST.read_text())
    manifest, changes = bench.throughput_manifest(base, bench.RunOptions(context_parallel=1))
    fields = {c.field for c in changes}
    assert {"spec.model.hfCheckpoint", "spec.checkpoint", "spec.eval", "spec.rollout.numRollout",
            "spec.sglang.serverArgs.loadFormat", "spec.perf.contextParallelSize"} <= fields
    assert manifest["spec"]["perf"]["contextParallelSize"] == 1
    assert all(c.why for c in changes)
    untouched = {k for k in base["spec"]["rollout"]} - {"promptData", "numRollout"}
    assert all(manifest["spec"]["rollout"][k] == base["spec"]["rollout"][k] for k in untouched)
    assert base["spec"]["perf"]["contextParallelSize"] == 2  # the input is not mutated


def test_engine_memory_reads_sglangs_memory_usage_and_none_for_the_embedded_engine():
    bench = load_bench()
    info = {"internal_states": [{"memory_usage": {"weight": 8.77, "kvcache": 93.1, "graph": 1.2,
                                                  "token_capacity": 2_300_000}}]}
    gb, usage = bench.engine_memory_gb(info)
    assert gb == pytest.approx(103.07) and usage["token_capacity"] == 2_300_000
    assert bench.engine_memory_gb({"internal_states": [{"running": 0}]}) == (None, {})


def _layout():
    return {"trainer_gpus": 4, "rollout_gpus": 4, "total_gpus": 8}


def test_row_divides_by_the_gpus_of_each_role_and_splits_the_step():
    bench = load_bench()
    metrics = {"perf/rollout_tokens_per_s": 8000.0, "time/rollout_s": 100.0, "time/logprob_s": 0.0,
               "time/train_s": 50.0, "time/weight_sync_s": 5.0, "time/checkpoint_s": 0.0,
               "time/step_s": 160.0, "rollout/samples": 4.0, "rollout/generated_tokens": 4000.0}
    mem = [{"kind": "cuda", "max_allocated_gb": 60.0, "max_reserved_gb": 70.0},
           {"kind": "cuda", "max_allocated_gb": 62.0, "max_reserved_gb": 71.0}]
    row = bench.measure_row(3, metrics, [1000, 2000, 3000, 4000], 4 * 989.4e12 * 50.0 * 0.4, _layout(), mem,
                            [{"gb_per_gpu": 100.0}, {"gb_per_gpu": None}])
    assert row["rollout_tokens_per_s_per_gpu"] == pytest.approx(2000.0)
    assert row["train_tokens_per_s_per_gpu"] == pytest.approx(10000 / 50 / 4)
    assert row["step_tokens_per_s_per_gpu"] == pytest.approx(10000 / 160 / 8)
    assert row["mfu"] == pytest.approx(0.4)
    assert row["other_s"] == pytest.approx(5.0)
    assert (row["trainer_peak_gb"], row["engine_gb_per_gpu"]) == (62.0, 100.0)


def test_table_has_every_column_and_dashes_where_a_figure_does_not_exist():
    bench = load_bench()
    row = bench.measure_row(0, {"time/train_s": 1.0, "time/step_s": 2.0}, [10], None, _layout(), [], [])
    text = bench.table([row])
    head, _, line = text.splitlines()
    assert [c.strip() for c in head.strip("|").split("|")] == list(bench.COLUMNS)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(bench.COLUMNS) and cells[bench.COLUMNS.index("MFU")] == "-"
    assert cells[bench.COLUMNS.index("engine GB/GPU")] == "-"


def test_summary_leaves_the_warm_up_rollout_out():
    bench = load_bench()
    rows = [bench.measure_row(i, {"time/train_s": 1.0, "time/step_s": s}, [10], None, _layout(), [], [])
            for i, s in enumerate((100.0, 10.0, 20.0))]
    summary = bench.summarize(rows)
    assert summary["steady_rollouts"] == 2 and summary["step_s"] == pytest.approx(15.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpu_smoke_runs_two_rollouts_through_the_driver_and_prints_the_table(tmp_path, capsys):
    bench = load_bench()
    out = bench.main(["--engine", "embedded", "--cpu", "--workdir", str(tmp_path / "work"),
                      "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    rows = out["rows"]
    assert [r["rollout_id"] for r in rows] == [0, 1]
    for r in rows:
        assert r["samples"] == 16 and r["generated_tokens"] > 0
        assert r["rollout_tokens_per_s"] > 0 and r["train_tokens_per_s_per_gpu"] > 0
        assert r["step_s"] >= r["stages_s"]["rollout"] > 0 and r["weight_sync_s"] > 0
        assert r["trainer_memory_kind"] == "host_rss" and r["trainer_peak_gb"] > 0
        assert r["metrics"]["progress/weight_version"] == r["rollout_id"] + 1
    assert "| " + " | ".join(bench.COLUMNS) + " |" in printed
    assert (tmp_path / "out" / "reference_run.json").is_file()
    assert (tmp_path / "work" / "model" / "kuberl-random-init.json").is_file()
    assert not (tmp_path / "work" / "model" / "model.safetensors").exists()
