"""Where a step's time goes: torch.profiler around a few training steps, summed by kind of kernel.

On a GPU the clock is the device's (CUDA kernels); on a CPU (the smoke run) it is the aten ops' CPU time.
"""

import time

PROFILE_STEPS = 2  # steps traced per row (the last ones of a stage run, extra ones after the bare loop's timing)
KERNEL_KINDS = (  # first match wins; CUDA kernel names on a GPU, aten op names on CPU
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "wgmma", "cublas", "aten::mm", "aten::bmm", "aten::addmm",
                "aten::linear", "aten::matmul")),
    ("attention", ("flash", "fmha", "attention", "efficient", "scaled_dot")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("softmax / cross-entropy", ("softmax", "nll", "cross_entropy", "logsumexp")),
    ("copies / casts", ("copy", "cast", "aten::to", "aten::_to")),
    ("norm / reductions", ("reduce", "norm", "aten::mean", "aten::sum", "rsqrt")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other elementwise")


class StepProfile:
    """torch.profiler around a few steps: device time by kind of kernel, the top kernels, and how much of the
    wall time the device was busy (the rest: the host launching kernels, syncs, data loading)."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.steps, self.wall = 0, 0.0

    def start(self):
        self._sync()
        self.profiler.start()
        self.t0 = time.perf_counter()

    def stop(self, steps: int):
        self._sync()
        self.wall += time.perf_counter() - self.t0
        self.profiler.stop()
        self.steps += steps

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def summary(self) -> dict:
        from torch.autograd import DeviceType

        events = []
        for evt in self.profiler.key_averages():
            if self.cuda:  # kernels: their own device time
                if evt.device_type == DeviceType.CUDA and evt.self_device_time_total > 0:
                    events.append((evt.key, evt.self_device_time_total, evt.count))
            elif evt.key.startswith("aten::") and evt.self_cpu_time_total > 0:
                events.append((evt.key, evt.self_cpu_time_total, evt.count))
        steps = max(self.steps, 1)
        busy = sum(t for _, t, _ in events) / 1e3 / steps  # ms a step (microseconds in the profiler)
        kinds: dict = {}
        for name, t, _ in events:
            kind = kernel_kind(name)
            kinds[kind] = kinds.get(kind, 0.0) + t / 1e3 / steps
        top = sorted(events, key=lambda e: -e[1])[:10]
        return {"profiled_steps": self.steps, "wall_ms_per_step": round(self.wall * 1e3 / steps, 2),
                "busy_ms_per_step": round(busy, 2), "clock": "device" if self.cuda else "cpu (aten ops)",
                "kinds_ms_per_step": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                "top": [[name[:90], round(t / 1e3 / steps, 2), count // steps] for name, t, count in top]}


def profile_callback(last_steps: int = PROFILE_STEPS):
    """A TrainerCallback that profiles a stage run's last `last_steps` optimizer steps (the timed median of the
    logged steps barely moves); the summary lands in `callback.result`."""
    from transformers import TrainerCallback

    class ProfileLastSteps(TrainerCallback):
        result: dict | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.max_steps - state.global_step == last_steps:
                self.profile = StepProfile()
                self.profile.start()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps and getattr(self, "profile", None) is not None:
                self.profile.stop(last_steps)
                self.result = self.profile.summary()

    return ProfileLastSteps()
