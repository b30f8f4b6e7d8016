"""Per-step progress from inside the jitted denoising scan.

The whole denoising loop is one `lax.scan` inside one `jax.jit`, so the host hears nothing until it ends. With
progress or a step callback asked for, the scan body ends with a host callback (`io_callback`, unordered: it
also runs under a multi-device mesh) that fires once per step, after that step's latents exist; the host end,
a pipeline's `StepHook`, forwards it to whoever listens during that generation. Off (the default), the program
has no callback at all and compiles to exactly the program without this module (tests/pipelines/test_progress.py
compares the lowered text), since the jit cache key says whether the hook is traced in.

    pipe("a dog barks", progress=True)                        # a tqdm bar: step i/n, elapsed, ETA
    pipe("a dog barks", callback=lambda step, t: print(step, t))
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable


class StepHook:
    """The host end of the scan's per-step callback: traced once into a pipeline's hooked denoise program; each
    generation attaches its listeners `fn(step, timestep, total)` for as long as it runs."""

    def __init__(self):
        self._listeners: tuple[Callable, ...] = ()
        self._lock = threading.Lock()  # one generation listens at a time per pipeline

    def __call__(self, step, timestep, total: int) -> None:
        for fn in self._listeners:
            fn(int(step), int(timestep), total)

    @contextlib.contextmanager
    def listening(self, *listeners: Callable):
        with self._lock:
            self._listeners = tuple(listeners)
            try:
                yield self
            finally:
                self._listeners = ()


def emit_step(hook: StepHook, step, timestep, total: int, after) -> None:
    """Inside the scan body: call `hook(step, timestep, total)` on the host once `after` (this step's output) is
    computed; one scalar of it is the callback's operand, so the report waits for the step instead of racing it."""
    from jax.experimental import io_callback

    def on_host(s, t, _):
        hook(s, t, total)

    io_callback(on_host, None, step, timestep, after[(0,) * after.ndim], ordered=False)


def format_step(step: int, total: int, elapsed: float) -> str:
    """'step 3/200, 4.1 s, ETA 4 min 28 s' after step index `step` (0-based) finished, `elapsed` s after the start."""
    done = step + 1
    eta = elapsed / done * (total - done)
    return f"step {done}/{total}, {_seconds(elapsed)}, ETA {_seconds(eta)}"


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class StepBar:
    """A tqdm bar over one generation's denoising steps (step i of n, elapsed, ETA), started when the run starts
    (after compiling), so compile time never enters the rate. Listener for `StepHook.listening`."""

    def __init__(self, desc: str = "denoising", file=None, leave: bool = True):
        self.desc, self.file, self.leave = desc, file or sys.stderr, leave
        self.bar, self.start_time = None, time.time()

    def start(self) -> None:
        self.start_time = time.time()  # tqdm clocks with time.time

    def __call__(self, step: int, timestep: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="step", file=self.file, leave=self.leave, dynamic_ncols=True)
            self.bar.start_t = self.start_time
        self.bar.set_postfix_str(f"t={timestep}", refresh=False)
        self.bar.update(max(0, step + 1 - self.bar.n))  # unordered callbacks: never step back

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_hooked(pipe, key, jitted, args: tuple, *, callback=None, progress=False):
    """Run the hooked denoise program `jitted(*args)` with its listeners attached: `callback(step, timestep)`,
    and with `progress` a `StepBar` (True) or any `listener(step, timestep, total)` with an optional `start()`.

    The program is compiled first (`pipe._compiled`, cached per shapes) so the clock starts when the steps do.
    """
    import jax  # here, not at the top: tools/batch.py imports this module before JAX may be initialised

    executable = pipe._compiled(key, jitted, *args)
    bar = StepBar() if progress is True else progress or None
    listeners = [bar] if bar is not None else []
    if callback is not None:
        listeners.append(lambda step, timestep, total: callback(step, timestep))
    with pipe._step_hook.listening(*listeners):
        if hasattr(bar, "start"):
            bar.start()
        try:
            out = jax.block_until_ready(executable(*args))  # the listeners must stay attached while the steps run
        finally:
            if isinstance(bar, StepBar):
                bar.close()
    return out


class PostfixSteps:
    """Step progress of the current batch as the postfix of an outer (item) bar: 'step 57/200, 1 min 02 s,
    ETA 2 min 35 s'. Listener for `StepHook.listening`."""

    def __init__(self, bar):
        self.bar, self.start_time = bar, time.perf_counter()

    def start(self) -> None:
        self.start_time = time.perf_counter()

    def __call__(self, step: int, timestep: int, total: int) -> None:
        self.bar.set_postfix_str(format_step(step, total, time.perf_counter() - self.start_time))


def batch_steps(item_bar, enabled: bool, single: bool, desc: str):
    """The step listener of one `generate_items` batch in tools/batch.py: a step bar of its own when the run
    has a single item; in a batch run the item bar's postfix; False (no callback in the program) when off."""
    if not enabled:
        return False
    return StepBar(desc=desc) if single else PostfixSteps(item_bar)
