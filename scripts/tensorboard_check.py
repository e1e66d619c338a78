"""Read a run's TensorBoard event files with TensorBoard's own reader and check them
against the run's metrics.jsonl.

    /work/venv/bin/python scripts/tensorboard_check.py RUN      # pip install tensorboard

Loads RUN/tensorboard/ with tensorboard's EventAccumulator (every record's CRC checked by
its reader), prints each scalar tag with its points, and exits non-zero unless: every
evaluation in metrics.jsonl is there as `eval/<split>/<metric>` at its step with its
value (to float32), the training scalars (loss, learning rate, gradient norm, tokens/s)
are logged, the resolved settings are a `config` text summary, and the hparams plugin's
session start (with the run's learning rate) and end parse as TensorBoard's protobufs.
"""

import json
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2


def main(run: Path) -> None:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in sorted(tags["scalars"]):
        points = [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]
        print(f"{tag}: {len(points)} points, first {points[0]}, last {points[-1]}")
    bad = []
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    for r in records:
        for split, metrics in r["dev"].items():
            for k, v in metrics.items():
                tag = f"eval/{split}/{k}"
                got = {e.step: e.value for e in acc.Scalars(tag)} if tag in tags["scalars"] else {}
                if r["step"] not in got or got[r["step"]] != np.float32(v):
                    bad.append(f"{tag} at step {r['step']}: {got.get(r['step'])} vs {v}")
    for tag in ["train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_s"]:
        if tag not in tags["scalars"]:
            bad.append(f"no {tag}")
    if "config" not in tags["tensors"]:
        bad.append("no config text")
    else:
        text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
        settings = json.loads(text.strip("`\n").removeprefix("json\n"))
        print("config text: lr", settings["optimisation"]["lr"])
    meta = acc.summary_metadata
    start = meta.get("_hparams_/session_start_info")
    end = meta.get("_hparams_/session_end_info")
    if start is None or end is None:
        bad.append("no hparams session")
    else:
        data = plugin_data_pb2.HParamsPluginData.FromString(start.plugin_data.content)
        hp = data.session_start_info.hparams
        print("hparams:", {k: (v.number_value or v.string_value) for k, v in sorted(hp.items())})
        info = json.loads((run / "config.json").read_text())
        if hp["lr"].number_value != info["train"]["optimisation"]["lr"]:
            bad.append("hparams lr differs from the run's")
        end_data = plugin_data_pb2.HParamsPluginData.FromString(end.plugin_data.content)
        print("session end status:", end_data.session_end_info.status)
    if bad:
        sys.exit("\n".join(bad))
    print(f"ok: {len(records)} evaluations match metrics.jsonl")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
