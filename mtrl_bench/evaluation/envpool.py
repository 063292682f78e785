"""Meta-World environments stepped in worker processes, batched through shared memory.

Why not gymnasium's AsyncVectorEnv: it runs one process per environment (2500 for MT50 x 50
goals) and pickles every step's info dicts. Here each worker owns a shard of environments;
actions, observations, rewards and success flags travel through shared memory and the pipe
carries only a one-word command and its acknowledgement (``tools/bench_eval.py`` measures both).

The pool holds a fixed list of *slots*, each bound to one task. :meth:`EnvPool.set_goals` points
every slot at one of the task's 50 goals (or leaves it idle) with ``env.set_task``, which gives
trajectories bit-identical to a fresh ``suites.make_env(task, goal)`` (checked in
``tests/test_evaluation.py``), so the same workers serve every evaluation of a run. Slot ``i``
lives in worker ``i % W``: every worker gets a mix of tasks, which balances the step cost.

Workers ignore Ctrl-C (the parent stops them) and report an exception in an environment with
the slot it happened in, so the error names the task and goal. Actions reach ``env.step`` as
float32, the dtype of Meta-World's action space. Workers are started with "spawn" (no fork of
a parent holding CUDA or torch threads), so a script that builds a pool needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import traceback
import weakref
from collections.abc import Sequence

import numpy as np

from mtrl_bench.suites import ACTION_DIM, OBS_DIM

IDLE = -1  # goal value of a slot that takes no part in the current round
ALL = -1  # the group of every active slot


def _views(buffers, num_slots: int, num_workers: int) -> dict[str, np.ndarray]:
    obs, actions, rewards, success, current = buffers
    return {
        "obs": np.frombuffer(obs, dtype=np.float64).reshape(num_slots, OBS_DIM),
        "actions": np.frombuffer(actions, dtype=np.float32).reshape(num_slots, ACTION_DIM),
        "rewards": np.frombuffer(rewards, dtype=np.float64),
        "success": np.frombuffer(success, dtype=np.uint8),
        "current": np.frombuffer(current, dtype=np.int64).reshape(num_workers),
    }


def _worker_main(index: int, num_workers: int, conn, buffers, slot_tasks: list[str]) -> None:
    """Serve commands for slots ``index, index + W, ...`` until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import warnings

    warnings.filterwarnings("ignore", module="gymnasium")  # obs-space bounds warnings
    from mtrl_bench.suites import env_class, goal_tasks

    view = _views(buffers, len(slot_tasks), num_workers)
    obs, actions, rewards, success = view["obs"], view["actions"], view["rewards"], view["success"]
    current = view["current"]
    mine = list(range(index, len(slot_tasks), num_workers))
    envs: dict[int, object] = {}
    goals: dict[str, dict[int, object]] = {}
    active: list[int] = []
    groups: dict[int, list[int]] = {ALL: []}  # group id -> this worker's active slots
    while True:
        command, arg = conn.recv()
        current[index] = IDLE
        try:
            reply = None
            if command == "goal_tasks":  # build the goal lists of some tasks (MT1 is slow)
                reply = {task: goal_tasks(task) for task in arg}
            elif command == "build":  # arg: {task: {goal index: metaworld Task}}
                goals = arg
                for slot in mine:
                    current[index] = slot
                    envs[slot] = env_class(slot_tasks[slot])()
            elif command == "set_goals":  # arg: (goal index or IDLE, group) of every slot
                slot_goals, slot_groups = arg
                active = [slot for slot in mine if slot_goals[slot] != IDLE]
                groups = {ALL: active}
                for slot in active:
                    groups.setdefault(int(slot_groups[slot]), []).append(slot)
                for slot in active:
                    current[index] = slot
                    envs[slot].set_task(goals[slot_tasks[slot]][slot_goals[slot]])
            elif command == "reset":
                for slot in active:
                    current[index] = slot
                    obs[slot] = envs[slot].reset()[0]
            elif command == "step":  # arg: the group of slots to step (ALL: every active one)
                for slot in groups.get(arg, []):
                    current[index] = slot
                    o, r, _, _, info = envs[slot].step(actions[slot])
                    obs[slot] = o
                    rewards[slot] = r
                    success[slot] = bool(info["success"])
            elif command == "close":
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            current[index] = IDLE
            conn.send(("ok", reply))
        except Exception as exc:  # reported to the parent, which raises with task and goal
            conn.send(("error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())))


def _shutdown(processes, conns, graceful: bool) -> None:
    """Stop the workers: ask politely (if wanted), then terminate, then kill."""
    if graceful:
        for proc, conn in zip(processes, conns):
            if proc.is_alive():
                try:
                    conn.send(("close", None))
                except (OSError, ValueError):
                    pass
        for proc in processes:
            proc.join(timeout=5)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()


class EnvPool:
    """``len(slot_tasks)`` Meta-World environments in ``workers`` processes.

    ``goal_indices``: every goal index a slot may later be pointed at (their metaworld Task
    objects are built once, in parallel, and sent to the workers). Use as a context manager,
    or call :meth:`close`; workers are also stopped when the pool is garbage-collected.
    """

    def __init__(self, slot_tasks: Sequence[str], goal_indices: Sequence[int],
                 workers: int | None = None):
        self.slot_tasks = list(slot_tasks)
        num_slots = len(self.slot_tasks)
        self.num_workers = max(1, min(workers or os.cpu_count() or 1, num_slots))
        self._goals = np.full(num_slots, IDLE, dtype=np.int64)
        self._closed = False
        self._sent: list[bool] = []  # which workers the last command reached
        ctx = mp.get_context("spawn")
        buffers = (
            ctx.RawArray(ctypes.c_double, num_slots * OBS_DIM),
            ctx.RawArray(ctypes.c_float, num_slots * ACTION_DIM),
            ctx.RawArray(ctypes.c_double, num_slots),
            ctx.RawArray(ctypes.c_uint8, num_slots),
            ctx.RawArray(ctypes.c_int64, self.num_workers),
        )
        self._view = _views(buffers, num_slots, self.num_workers)
        self._view["current"][:] = IDLE
        self._conns, self._processes = [], []
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns, False)
        try:
            for index in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, daemon=True,
                                   name=f"mtrl-bench-env-{index}",
                                   args=(index, self.num_workers, child, buffers, self.slot_tasks))
                proc.start()
                child.close()  # so a dead worker reads as EOF here
                self._conns.append(parent)
                self._processes.append(proc)
            tasks = list(dict.fromkeys(self.slot_tasks))
            shares = self._command("goal_tasks", [tasks[w::self.num_workers]
                                                  for w in range(self.num_workers)])
            all_goals = {task: tuple(goals) for share in shares for task, goals in share.items()}
            wanted = {task: {g: all_goals[task][g] for g in goal_indices} for task in tasks}
            self._command("build", [wanted] * self.num_workers)
        except BaseException:
            self.close(graceful=False)
            raise

    @property
    def num_slots(self) -> int:
        return len(self.slot_tasks)

    @property
    def processes(self) -> list:
        return list(self._processes)

    def set_goals(self, goals: Sequence[int], groups: Sequence[int] | None = None) -> None:
        """Point slot ``i`` at goal ``goals[i]`` (IDLE: skip the slot until the next call);
        ``groups[i]`` (default 0) is the group :meth:`step_async` can step on its own."""
        self._goals = np.asarray(goals, dtype=np.int64).copy()
        if self._goals.shape != (self.num_slots,):
            raise ValueError(f"expected {self.num_slots} goals, got shape {self._goals.shape}")
        slot_groups = (np.zeros(self.num_slots, dtype=np.int64) if groups is None
                       else np.asarray(groups, dtype=np.int64))
        self._command("set_goals", [(self._goals, slot_groups)] * self.num_workers)
        self._view["obs"][:] = 0.0
        self._view["rewards"][:] = 0.0
        self._view["success"][:] = 0

    def reset(self) -> np.ndarray:
        """Start an episode in every active slot; observations (num_slots, 39) float64."""
        self._command("reset")
        return self._view["obs"].copy()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of every active slot: (observations, rewards, success flags) copies."""
        self.step_async(ALL, actions)
        return self.wait()

    def step_async(self, group: int, actions: np.ndarray) -> None:
        """Start one step of the slots of ``group`` (ALL: every active slot) and return at
        once, so the caller can compute another group's actions meanwhile; ``actions``
        (num_slots, 4) go to the shared buffer, of which the workers read the group's rows.
        Finish with :meth:`wait` before any other command."""
        self._view["actions"][:] = actions
        self._send("step", [group] * self.num_workers)

    def wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finish the step started by :meth:`step_async`: (observations, rewards, success
        flags) of every slot, copies (slots outside the stepped group are unchanged)."""
        self._receive("step")
        v = self._view
        return v["obs"].copy(), v["rewards"].copy(), v["success"].astype(bool)

    def _command(self, command: str, args: list | None = None) -> list:
        """Send ``command`` to every worker, wait for all, raise the first failure."""
        self._send(command, args)
        return self._receive(command)

    def _send(self, command: str, args: list | None = None) -> None:
        if self._closed:
            raise RuntimeError("the environment pool is closed")
        sent = []
        for w, conn in enumerate(self._conns):
            try:
                conn.send((command, None if args is None else args[w]))
                sent.append(True)
            except OSError:  # broken pipe: the worker is gone
                sent.append(False)
        self._sent = sent

    def _receive(self, command: str) -> list:
        sent = self._sent
        replies, failure = [], None
        for w, conn in enumerate(self._conns):
            try:
                if not sent[w]:
                    raise EOFError
                status, payload = conn.recv()
            except (EOFError, OSError):
                self._processes[w].join(timeout=1)
                status, payload = "died", self._processes[w].exitcode
            if status == "ok":
                replies.append(payload)
            elif failure is None:
                failure = (w, status, payload, self._describe(int(self._view["current"][w])))
        if failure is not None:
            self.close(graceful=False)
            w, status, payload, where = failure
            if status == "died":
                raise RuntimeError(f"environment worker {w} died (exit code {payload}) during "
                                   f"{command}" + (f" of {where}" if where else ""))
            message, trace = payload
            raise RuntimeError(f"Meta-World environment {where or '(setup)'} failed during "
                               f"{command} (worker {w}): {message}\n{trace}".rstrip())
        return replies

    def _describe(self, slot: int) -> str:
        """'task goal g (slot i)' of the slot a worker was busy with ('' if none)."""
        if slot == IDLE:
            return ""
        goal = int(self._goals[slot])
        goal_text = f"goal {goal}" if goal != IDLE else "(no goal yet)"
        return f"{self.slot_tasks[slot]} {goal_text} (slot {slot})"

    def close(self, graceful: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _shutdown(self._processes, self._conns, graceful)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(graceful=exc_type is None)
