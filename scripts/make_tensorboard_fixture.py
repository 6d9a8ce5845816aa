#!/usr/bin/env python3
"""Writes Tests/TrainTests/Fixtures/scalars.tfevents with TensorBoard's own writer (its RecordWriter and Event
protos), for TensorBoardTests to compare our encoder's bytes against. The events and wall times are fixed; the same
list is in TensorBoardTests.fixtureEvents.

    python3 -m venv /tmp/tb && /tmp/tb/bin/pip install tensorboard && /tmp/tb/bin/python scripts/make_tensorboard_fixture.py
"""
import os

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

EVENTS = [  # (wall_time, step, [(tag, value)])
    (1700000000.25, 0, [("loss_metrics/global_avg_loss", 7.625)]),
    (1700000001.5, 1, [("loss_metrics/global_avg_loss", 7.5), ("grad_norm", 1.25), ("lr", 3e-4)]),
    (1700000002.75, 300, [("mfu(%)", 42.5), ("comm/sent_all_to_all(MiB)", -0.1), ("expert_load/cv_layer0", 1e-9)]),
]

path = os.path.join(os.path.dirname(__file__), "..", "Tests", "TrainTests", "Fixtures", "scalars.tfevents")
with open(path, "wb") as f:
    w = RecordWriter(f)
    w.write(Event(wall_time=1700000000.0, file_version="brain.Event:2").SerializeToString())
    for wall_time, step, scalars in EVENTS:
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars])
        w.write(Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())
    w.flush()
print(path, os.path.getsize(path), "bytes")
