"""What runs inside a job's child process: fetch data, resume, train, publish.

Guarantees:
- The child talks to its parent only through ``messages`` (the vocabulary of
  ``trainer/messages.py``: progress while training, then one final message saying how it
  ended); a child that dies before sending a final message is reported by the parent with its
  exit code.
- A 409 from the controller (``StaleAttempt``) stops the job at once: another attempt owns it.
- While the controller is away the job keeps training; checkpoints that cannot be delivered
  are skipped (the next one supersedes them); the result is retried until delivered, fenced or
  the job is stopped.
- If the parent process dies, the child exits too (no orphan keeps training).
- A data-parallel job's rank joins its gang within ``gang_init_timeout_s``; a gang that cannot
  meet, or breaks (a member killed, crashed or partitioned), ends this rank as a retryable
  failure (``GangBroken``): the controller requeues the job. Rank 0 alone writes checkpoints and
  the result, and only it reports progress.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnswarm.config import Settings
from cnnswarm.cpu import JobShare, job_share
from cnnswarm.errors import GangBroken, StaleAttempt, TrainingCancelled
from cnnswarm.protocol import Dispatch
from cnnswarm.trainer.controller_api import (
    ControllerClient,
    ControllerUnavailable,
    RetriesAborted,
    RetryPolicy,
)
from cnnswarm.trainer.messages import (
    ChildMessage,
    FinalMessage,
    cancelled,
    failed,
    fenced,
    progress_message,
    succeeded,
)

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from cnnswarm.ml.distributed import Gang

log = logging.getLogger(__name__)

# A checkpoint is worth a short wait, not a stalled training run.
CHECKPOINT_POLICY = RetryPolicy(deadline_s=10.0)
# Exit code of a child whose parent vanished.
PARENT_GONE_EXIT_CODE = 70


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs from the trainer's settings (picklable, no secrets beyond the token,
    which its repr leaves out)."""

    controller_url: str
    api_token: str = field(repr=False)
    cache_dir: Path
    torch_threads: int  # 0: this job's share of the host's CPUs (cnnswarm.cpu.JobShare)
    force_cpu: bool
    cpu_coordination_dir: Path = field(default_factory=lambda: Settings().cpu_coordination_dir)
    # A gang that has not met by then fails the attempt; a collective (a peer gone or
    # partitioned) that long breaks it (cnnswarm.ml.distributed).
    gang_init_timeout_s: float = Settings.gang_init_timeout_s
    gang_collective_timeout_s: float = Settings.gang_collective_timeout_s


def _exit_when_parent_dies() -> None:
    """Start a daemon thread that ends this process as soon as its parent is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def child_main(
    dispatch: Dispatch, config: ChildConfig, messages: Queue[ChildMessage], cancel: Event
) -> None:
    """Entry point of a job's child process: run the job, send one final message."""
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s job {dispatch.job_id}: %(levelname)s %(message)s"
    )
    _exit_when_parent_dies()
    final: FinalMessage
    try:
        with job_share(config.cpu_coordination_dir, explicit_threads=config.torch_threads) as share:
            run_job(dispatch, config, messages, cancel, share)
        final = succeeded()
    except (TrainingCancelled, RetriesAborted):
        final = cancelled()
    except StaleAttempt as exc:
        log.warning("fenced: %s", exc)
        final = fenced(str(exc))
    except GangBroken as exc:
        log.warning("gang broken: %s", exc)
        final = failed(f"{type(exc).__name__}: {exc}", retryable=True)
    except Exception as exc:
        log.exception("job failed")
        final = failed(f"{type(exc).__name__}: {exc}", retryable=False)
    messages.put(final)
    messages.close()
    messages.join_thread()


def run_job(
    dispatch: Dispatch,
    config: ChildConfig,
    messages: Queue[ChildMessage],
    cancel: Event,
    threads: JobShare,
) -> None:
    """Fetch the dataset and latest checkpoint, train (with ``threads``: this job's share of the
    host, asked again as other jobs start and end), and publish the model artefact."""
    # Imported here: the trainer's parent process never needs torch.
    import torch

    from cnnswarm.ml.artifact import artifact_to_bytes
    from cnnswarm.ml.checkpoint import checkpoint_from_bytes, checkpoint_to_bytes
    from cnnswarm.ml.datasets.base import ArrayDataset
    from cnnswarm.ml.train import Progress, TrainOptions, train

    torch.set_num_threads(threads())
    client = ControllerClient(config.controller_url, config.api_token, should_stop=cancel.is_set)

    dataset_file = client.fetch_dataset(dispatch.dataset, config.cache_dir)
    dataset = ArrayDataset.load_npz(dataset_file).subset(dispatch.example_idxs)
    opts = TrainOptions.from_dict(dispatch.train_opts, model_type=dispatch.model_type)
    checkpoint_bytes = client.get_checkpoint(dispatch.job_id)
    resume_from = checkpoint_from_bytes(checkpoint_bytes) if checkpoint_bytes else None
    if resume_from is not None:
        log.info("resuming attempt %d from a checkpoint", dispatch.attempt)

    def on_progress(progress: Progress) -> None:
        messages.put(progress_message(progress.progress, progress.epoch, progress.metrics))

    def on_checkpoint(checkpoint: dict[str, Any]) -> None:
        data = checkpoint_to_bytes(checkpoint)
        try:
            client.put_checkpoint(dispatch.job_id, dispatch.attempt, data, policy=CHECKPOINT_POLICY)
        except ControllerUnavailable as exc:
            log.warning("checkpoint not delivered (training goes on): %s", exc)

    with gang_of(dispatch, config) as gang:
        # A gang's members each fetched the same checkpoint above, before meeting: none of
        # this attempt's checkpoints exists before they all have met.
        result = train(
            dispatch.model_type,
            dataset,
            opts,
            resume_from=resume_from,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            should_cancel=cancel.is_set,
            device="cpu" if config.force_cpu else None,
            threads=threads,
            gang=gang,
        )
    if cancel.is_set():
        raise TrainingCancelled()
    if dispatch.rank == 0:  # rank 0 alone publishes (every rank holds the same weights)
        client.post_result(dispatch.job_id, dispatch.attempt, artifact_to_bytes(result.artifact))


@contextlib.contextmanager
def gang_of(dispatch: Dispatch, config: ChildConfig) -> Iterator[Gang | None]:
    """The joined gang of a data-parallel dispatch (``GangBroken`` when it cannot meet in
    time, or breaks while training), or None for a one-trainer job."""
    if not dispatch.is_gang:
        yield None
        return
    from cnnswarm.ml.distributed import GangMember, join_gang

    assert dispatch.master_addr is not None and dispatch.master_port is not None
    member = GangMember(
        dispatch.rank,
        dispatch.world_size,
        dispatch.master_addr,
        dispatch.master_port,
        init_timeout_s=config.gang_init_timeout_s,
        collective_timeout_s=config.gang_collective_timeout_s,
    )
    with join_gang(member, force_cpu=config.force_cpu) as gang, gang.collectives("training"):
        yield gang
