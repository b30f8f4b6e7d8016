"""Crash-safe, resumable, sharded batch generation: prompts in, one wav per item plus a JSONL manifest out.

Layout of an output folder:

    00000-a-dog-barks.wav     one 16-bit wav per item, written atomically (temporary file + rename)
    manifest.jsonl            one line per finished item, appended, flushed and fsynced after its wav

An item is done iff its manifest line exists and its wav exists, so re-running the same command resumes:
finished items are skipped, an item whose wav landed but whose line did not (a crash between the two) is
generated again. NaN/Inf output is a failure and is never written.

Devices: a `jax.sharding.Mesh` with one "data" axis over this process's devices; parameters replicated,
latents and text states split along the batch. Batches are padded (repeating the last item) to a multiple
of the device count; padding rows are never written.

Multi-host: under a multi-process launcher (JAX_COORDINATOR_ADDRESS, SLURM with >1 task, Open MPI, a TPU
pod) `jax.distributed.initialize()` runs first (tools/fleet.py: timeouts, recoverability, the exit of process
0). Process k first generates items i with i % process_count == k, then any item nobody holds (a slow or dead
peer's), on a mesh of its local devices (data parallelism needs no cross-host traffic), and writes its own
manifest (`manifest.p00001-of-00004.jsonl`); resumption reads all `manifest*.jsonl` files. With a mesh across
processes (`--mesh` larger than one process's devices) all processes generate every item together, in lockstep:
process 0 decides what is pending and which batch is next (`parallel.from_process_0`) and alone writes files.

Several runs on one folder (a fleet, or the same command in two shells): an item is generated only under its
claim (`.claims/<index>`, tools/fleet.py::Claims), taken just before its batch and dropped once its manifest
line is written; a claim whose owner died is taken over. Manifest lines are appended under an exclusive lock.

Seeds: an item without an explicit seed gets `item_seed(seed, index)` (a hash of the global seed and the
item index); its noise is drawn from fold_in(PRNGKey(item_seed), 0), so its audio does not depend on the
batch size, the device count, the other items or resumption, and `pipe(prompt, seed=item_seed)`
reproduces it.

Candidates (`candidates=N > 1`, AudioLDM2's released protocol uses 3): each item is generated N times, candidate c
from fold_in(PRNGKey(item_seed), c), and the one CLAP ranks best (pipelines/audioldm2/rerank.py) is written; its
manifest line adds `candidate` (which one), `clap_score` (its cosine similarity with the prompt) and
`candidate_scores` (all N, in generation order). `pipe(prompt, seed=item_seed, num_candidates=N)` reproduces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from litefocus_jax.pipelines.audioldm2.progress import batch_steps
from litefocus_jax.tools.fleet import Claims
from litefocus_jax.tools.manifest import append_line, manifest_path, read_manifests, save_npy

# the manifest fields that must match for a finished item to count as this run's result
KEY_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "seconds",
    "model",
    "scheduler",
    "steps",
    "guidance",
    "attention",
    "dtype",
    "candidates",  # absent (None) for one candidate, as in manifests written before candidates existed
    "transcription",  # speech snapshots only; absent (None) for text-to-audio items
)


@dataclasses.dataclass
class Item:
    index: int
    prompt: str
    negative_prompt: str
    seconds: float
    seed: int
    line: int | None = None  # 1-based line in the prompts file
    transcription: str | None = None  # the words to speak (speech snapshots, pipelines/audioldm2/speech.py)


@dataclasses.dataclass
class Failure:
    what: str  # "line 3" or "item 4"
    reason: str

    def __str__(self):
        return f"{self.what}: {self.reason}"


@dataclasses.dataclass
class BatchResult:
    written: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    failed: list[Failure] = dataclasses.field(default_factory=list)
    elsewhere: list[int] = dataclasses.field(default_factory=list)  # pending here, but done or held by another run
    compile_seconds: float = 0.0
    run_seconds: float = 0.0


def item_seed(seed: int, index: int) -> int:
    """The seed of item `index` under global `seed`: 31 bits of sha256("seed:index")."""
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _number(value, name, line):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def parse_prompts(
    path: str | os.PathLike, *, seconds: float, negative_prompt: str, seed: int
) -> tuple[list[Item], list[Failure]]:
    """Read a prompts file: plain text (one prompt a line) or JSONL (objects with "prompt" and optionally
    "negative_prompt", "seconds", "seed", and for speech snapshots "transcription"); a line starting with "{" is
    JSON. Blank lines and lines starting with "#" are skipped. Item indices count every prompt line, bad ones too,
    so fixing a bad line later does not renumber the others. Bad lines come back as failures naming their line
    number."""
    items, failures = [], []
    text = Path(path).read_text(encoding="utf-8")
    index = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        this = index
        index += 1
        try:
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
                unknown = sorted(set(obj) - {"prompt", "negative_prompt", "seconds", "seed", "transcription"})
                if unknown:
                    raise ValueError(f"unknown key(s) {unknown}; allowed: prompt, negative_prompt, seconds, seed, transcription")
                spoken = obj.get("transcription")
                if spoken is not None and (not isinstance(spoken, str) or not spoken.strip()):
                    raise ValueError("'transcription' must be a non-empty string (speech snapshots)")
                prompt = obj.get("prompt")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValueError("'prompt' must be a non-empty string")
                neg = obj.get("negative_prompt", negative_prompt)
                if neg is None:
                    neg = ""
                if not isinstance(neg, str):
                    raise ValueError("'negative_prompt' must be a string")
                secs = float(_number(obj.get("seconds", seconds), "'seconds'", number))
                if secs <= 0:
                    raise ValueError(f"'seconds' must be > 0, got {secs}")
                s = obj.get("seed")
                if s is None:
                    s = item_seed(seed, this)
                elif isinstance(s, bool) or not isinstance(s, int) or not (0 <= s < 2**31):
                    raise ValueError(f"'seed' must be an int in [0, 2**31), got {s!r}")
                items.append(Item(this, prompt, neg, secs, int(s), number, spoken))
            else:
                items.append(Item(this, line, negative_prompt, float(seconds), item_seed(seed, this), number))
        except ValueError as e:
            failures.append(Failure(f"line {number}", str(e)))
    return items, failures


def file_name(item: Item) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", item.prompt.lower()).strip("-")[:48].strip("-") or "item"
    return f"{item.index:05d}-{slug}.wav"


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Create `out_dir` if needed and prove it is writable (a probe file); raises OSError otherwise."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output folder {out} is not writable ({e.strerror or e}).") from None
    return out


def maybe_initialize_distributed(environ=None) -> bool:
    """Call `jax.distributed.initialize()` when launched by a multi-process launcher; True if it did.

    Detected: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES / JAX_PROCESS_ID), SLURM with more than one
    task, Open MPI (OMPI_COMM_WORLD_SIZE > 1), a multi-host TPU pod (TPU_WORKER_HOSTNAMES with several hosts);
    timeouts from LITEFOCUS_JAX_{INIT,HEARTBEAT,SHUTDOWN}_TIMEOUT (tools/fleet.py). Must run before anything
    touches the devices.
    """
    from litefocus_jax.tools.fleet import initialize_distributed

    return initialize_distributed(environ)  # ValueError naming the missing setting for a half-set launch


def local_mesh():
    """A Mesh with one "data" axis over this process's devices (all devices when single-process)."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.local_devices()), ("data",))


def _mesh_words(mesh) -> str:
    """e.g. "8 device(s)" for a data mesh, "4 device(s), data=1 x seq=4" with sequence parallelism."""
    shape = dict(mesh.shape)
    axes = " x ".join(f"{k}={v}" for k, v in shape.items())
    return f"{mesh.devices.size} device(s)" + (f", {axes}" if "seq" in shape else "")


def _test_hooks():
    """Test-only fault injection (environment): exit hard after N finished items, NaN for some items, wait for a
    file to exist before anything else (a process that starts late); tools/fleet.py: LITEFOCUS_JAX_TEST_KILL."""
    exit_after = os.environ.get("LITEFOCUS_JAX_TEST_EXIT_AFTER")
    nan_items = os.environ.get("LITEFOCUS_JAX_TEST_NAN_ITEMS", "")
    gate = os.environ.get("LITEFOCUS_JAX_TEST_WAIT_FOR")
    while gate and not os.path.exists(gate):
        time.sleep(0.1)
    return (int(exit_after) if exit_after else None), {int(x) for x in nan_items.split(",") if x.strip()}


def _pick_best(
    pipe, chunk: Sequence[Item], audios: Sequence[np.ndarray], n: int, per_chunk: int
) -> list[tuple[dict, np.ndarray]]:
    """Per item, (manifest fields, waveform) of its CLAP-best candidate; candidates with NaN/Inf never win."""
    from litefocus_jax.pipelines.audioldm2.rerank import score_candidates

    groups = [np.stack(audios[i * n : (i + 1) * n]) for i in range(len(chunk))]
    scores = score_candidates(pipe, [it.prompt for it in chunk], groups, pad_to=per_chunk)
    picks = []
    for group, score in zip(groups, scores):
        ranked = np.where(np.isfinite(group).all(axis=1) & np.isfinite(score), score, -np.inf)
        best = int(np.argmax(ranked))  # the first of equal scores: generation order
        extra = dict(candidate=best, clap_score=float(score[best]), candidate_scores=[float(x) for x in score])
        picks.append((extra, group[best]))
    return picks


def _buckets(items: Sequence[Item], frames_of: dict[int, int]) -> dict[int, list[Item]]:
    buckets: dict[int, list[Item]] = {}
    for it in items:
        buckets.setdefault(frames_of[it.index], []).append(it)
    return buckets


def _done(out: Path, indices: Sequence[int]) -> set[int]:
    """Those of `indices` done in `out` (a manifest line and its file), by any run."""
    done = read_manifests(out)
    return {i for i in indices if i in done and (out / done[i]["file"]).is_file()}


def _finished(out: Path, chunk: Sequence[Item]) -> set[int]:
    """The items of `chunk` that another run finished since this one started; clears their stale temporaries."""
    for it in chunk:
        for stale in out.glob(f".{file_name(it)}.tmp-*"):  # claimed by us now: left by a hard kill mid-write
            stale.unlink(missing_ok=True)
    return _done(out, [it.index for it in chunk])


def run_batch(
    pipe,
    items: Sequence[Item],
    out_dir: str | os.PathLike,
    *,
    settings: dict,
    num_inference_steps: int,
    guidance_scale: float,
    litefocus=None,
    batch_size: int = 4,
    mesh=None,
    process_index: int = 0,
    process_count: int = 1,
    save_npy_too: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    candidates: int = 1,
) -> BatchResult:
    """Generate every pending item this process owns into `out_dir` (see the module docstring).

    `settings` holds the run-wide manifest fields: model, scheduler, steps, guidance, attention, dtype.
    Items of one latent length form a bucket; each bucket's batches have one shape (one compile).
    With `candidates` N > 1, each item takes N rows of a `batch_size`-row batch and the CLAP-best is kept.
    """
    from tqdm import tqdm

    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}.")
    from litefocus_jax.pipelines.audioldm2.speech import check_items

    check_items(pipe, items)  # transcriptions exactly for a speech snapshot, before anything compiles
    if candidates > 1:
        from litefocus_jax.pipelines.audioldm2.rerank import check_ready

        check_ready(pipe)  # a text-only CLAP (converted by 0.1) fails here, before anything compiles
        settings = dict(settings, candidates=candidates)
    out = Path(out_dir)
    result = BatchResult()
    mesh = mesh if mesh is not None else local_mesh()
    ndev = mesh.shape["data"]  # batch rows split over "data" only; a "seq" axis splits each clip
    exit_after, nan_items = _test_hooks()
    import jax

    from litefocus_jax.pipelines.audioldm2 import parallel

    # a mesh across processes: they generate every item together, one manifest, process 0 decides and writes
    together = parallel.spans_processes(mesh)
    writer = not together or jax.process_index() == 0
    if together:
        process_index, process_count = 0, 1
        parallel.same_everywhere(
            mesh,
            "items and settings",
            ([dataclasses.astuple(it) for it in items], repr({k: v for k, v in settings.items() if k != "model"})),
        )
    by_index = {it.index: it for it in items}

    def sort_out():  # (skipped, pending) item indices
        done, skipped, pending = read_manifests(out), [], []
        for it in items:
            rec = done.get(it.index)
            want = dict(settings, prompt=it.prompt, negative_prompt=it.negative_prompt, seed=it.seed, seconds=it.seconds)
            want["transcription"] = it.transcription
            if rec is not None and any(rec.get(k) != want.get(k) for k in KEY_FIELDS):
                diff = [k for k in KEY_FIELDS if rec.get(k) != want.get(k)]
                raise ValueError(
                    f"{out} already holds item {it.index} made with different {diff} ({rec.get('file')}); use another "
                    "--out-dir, or delete that folder's results to start over."
                )
            if rec is not None and (out / rec["file"]).is_file():
                skipped += [it.index] if it.index % process_count == process_index else []
                continue
            pending.append(it.index)
        return skipped, pending

    result.skipped, pending = parallel.from_process_0(mesh, sort_out)
    pending = [by_index[i] for i in pending]
    if result.skipped:
        log(f"resuming: {len(result.skipped)} item(s) already done in {out}, {len(pending)} to go")

    frames_of = {it.index: pipe.latent_frames(it.seconds)[0] for it in pending}
    # batch shapes from every pending item of a length, so each process compiles the same one program per length
    shape_items: dict[int, list[Item]] = {}
    for it in pending:
        shape_items.setdefault(frames_of[it.index], []).append(it)
    # first this process's own items, then (a second pass) anyone's that nobody holds: a slow or dead peer's
    mine = [it for it in pending if it.index % process_count == process_index]
    passes = [mine, [it for it in pending if it.index % process_count != process_index]]
    claims = Claims(out, process_index, process_count)
    manifest = manifest_path(out, process_index, process_count)
    compile_before = pipe.compile_seconds
    start = time.perf_counter()
    bar = tqdm(
        total=len(pending),
        unit="item",
        disable=not progress or len(pending) < 2,  # one item: its step bar (below) stands in for this one
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
    )
    written_now = 0

    def stragglers():  # items passed over while live runs held them, once free again (their run died or failed them)
        return claims.wait_for_held(list(dict.fromkeys(result.elsewhere)), lambda idx: _done(out, idx), log)

    work = [fb for todo in passes for fb in sorted(_buckets(todo, frames_of).items())]
    try:
        while work:
            frames, bucket = work.pop(0)
            n = candidates
            rows = min(-(-max(batch_size, n) // ndev) * ndev, -(-len(shape_items[frames]) * n // ndev) * ndev)
            per_chunk = max(1, rows // n)  # items per batch; each takes n rows
            rows = -(-per_chunk * n // ndev) * ndev
            speaking = getattr(pipe, "speech", False)  # speech items carry a transcription (pipelines/audioldm2/speech.py)
            t5_len = None if speaking else max(pipe.t5_length(it.prompt) for it in shape_items[frames])
            queue = list(bucket)

            def next_batch():  # (chunk, passed over, left in the queue) item indices
                chunk, passed = claims.take_batch(queue, per_chunk, lambda c: _finished(out, c))
                return [it.index for it in chunk], passed, [it.index for it in queue]

            while queue:
                chunk, passed, queue = parallel.from_process_0(mesh, next_batch)
                chunk, queue = [by_index[i] for i in chunk], [by_index[i] for i in queue]
                result.elsewhere += passed
                bar.update(len(passed))
                if not chunk:
                    continue
                compiled = pipe.compile_seconds
                each = lambda f: [f(it) for it in chunk for _ in range(n)]  # noqa: E731  item-major rows
                try:
                    audios = pipe.generate_items(
                        each(lambda it: it.prompt),
                        each(lambda it: it.negative_prompt),
                        each(lambda it: it.seed),
                        each(lambda it: it.seconds),
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale,
                        litefocus=litefocus,
                        mesh=mesh,
                        pad_to=rows,
                        t5_length=t5_len,
                        noise_indices=list(range(n)) * len(chunk),
                        progress=batch_steps(bar, progress, len(pending) == 1, f"item {chunk[0].index}"),
                        transcriptions=each(lambda it: it.transcription) if speaking else None,
                    )
                    picks = _pick_best(pipe, chunk, audios, n, per_chunk) if n > 1 else [({}, a) for a in audios]
                except (ValueError, RuntimeError) as e:  # e.g. a length the UNet cannot take: fail these, go on
                    for it in chunk:
                        result.failed.append(Failure(f"item {it.index}", f"{type(e).__name__}: {e}"))
                        claims.release(it.index)  # free for another run (a peer waiting on it tries it once)
                    bar.update(len(chunk))
                    continue
                if pipe.compile_seconds > compiled:
                    bar.write(
                        f"compiled for {chunk[0].seconds:g} s items ({frames} latent frames, batch {rows} on "
                        f"{_mesh_words(mesh)}): {pipe.compile_seconds - compiled:.1f} s",
                        file=sys.stderr,
                    )
                for it, (extra, audio) in zip(chunk, picks):
                    if it.index in nan_items:
                        audio = np.full_like(audio, np.nan)
                    if not np.isfinite(audio).all():
                        result.failed.append(Failure(f"item {it.index}", "the output contains NaN or Inf; nothing written"))
                        claims.release(it.index)
                        bar.update(1)
                        continue
                    name = file_name(it)
                    if not writer:  # generated together with process 0, which writes it
                        result.written.append(it.index)
                        bar.update(1)
                        continue
                    if save_npy_too:
                        save_npy(out / (name[:-4] + ".npy"), audio)
                    from litefocus_jax.utils.io import save_wav

                    save_wav(out / name, audio, pipe.sampling_rate)
                    if exit_after is not None and written_now >= exit_after:
                        os._exit(75)  # test hook: a hard crash between the wav and its manifest line
                    record = dict(
                        index=it.index,
                        line=it.line,
                        prompt=it.prompt,
                        negative_prompt=it.negative_prompt,
                        seed=it.seed,
                        seconds=it.seconds,
                        **({"transcription": it.transcription} if it.transcription is not None else {}),
                        **settings,
                        file=name,
                        sampling_rate=pipe.sampling_rate,
                        samples=int(audio.shape[0]),
                        **extra,
                        **({"process": process_index} if process_count > 1 else {}),
                    )
                    append_line(manifest, record)
                    claims.release(it.index)  # done: the manifest line now says so
                    written_now += 1
                    result.written.append(it.index)
                    bar.update(1)
            if not work:  # the last batch: wait while live runs hold items passed over; take over any they drop
                free = parallel.from_process_0(mesh, stragglers)
                result.elsewhere = [i for i in result.elsewhere if i not in free]
                bar.update(-len(free))
                work = sorted(_buckets([by_index[i] for i in free], frames_of).items())
    finally:
        claims.close()  # failed or unfinished items become free for the next run
        bar.close()
    result.compile_seconds = pipe.compile_seconds - compile_before
    result.run_seconds = time.perf_counter() - start - result.compile_seconds
    return result
