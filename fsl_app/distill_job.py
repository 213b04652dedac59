"""A studio distillation job: a :class:`DistillRequest` (plain data) becomes a student run recorded in its project.

Runs on the generic :class:`fsl_app.jobs.JobQueue` like a training job (same result shape, so the Train page's jobs
panel shows it): phases by name, every epoch as a StepLog, Cancel honoured between batches, and a cancelled or failed
job leaves no run folder. :func:`preview` answers from the configs alone (no weights loaded) whether the teacher fits
the project and whether the student is larger than its teacher, so a page can say so before anything is queued.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .jobs import JobContext, JobQueue
from .run_tables import runs_dir
from .runs import PARTIAL_SUFFIX, new_run_name, read_run
from .strategies import interrupt_check
from .training_job import PHASE_NAMES

DISTILL_PHASES = {**PHASE_NAMES, "evaluate": "evaluating the student (teacher refitted on each split)",
                  "fit": "distilling into the student on every image"}


@dataclass(frozen=True)
class DistillRequest:
    """Everything a distillation job needs; plain data so it can be shown and queued."""

    project_path: str
    teacher_run: str
    student_backbone: str
    weights: str = "auto"
    input_size: int | None = None
    epochs: int = 10
    temperature: float = 4.0
    alpha: float = 0.7
    use_pool: bool = True

    def title(self) -> str:
        size = f" at {self.input_size} px" if self.input_size else ""
        pool = "" if self.use_pool else ", without the pool"
        return f"distil {Path(self.teacher_run).name} into {self.student_backbone}{size} (T={self.temperature:g}, " \
               f"alpha={self.alpha:g}{pool})"


@dataclass(frozen=True)
class Preview:
    """What can be said before training: ``error`` (the job would be refused) and warnings."""

    error: str | None
    warnings: list[str]
    teacher_params_m: float | None
    student_params_m: float | None
    teacher_input: int | None
    student_input: int | None


def preview(teacher_run: str | Path, project_classes: list[str], student_backbone: str,
            input_size: int | None = None) -> Preview:
    """Class check and size warnings from the teacher's config and the student's architecture (meta device)."""
    from .backbones import backbone_summary
    from .distill import DistillationError, check_classes

    config = read_run(teacher_run)["config"]
    spec = config.get("backbone") or {}
    teacher, student = backbone_summary(spec.get("name", "")), backbone_summary(student_backbone)
    teacher_input = ((spec.get("data_config") or {}).get("input_size") or [0, 0])[-1] or None
    student_input = input_size or (student.input_size[-1] if student.input_size else None)
    error = student.error
    try:
        check_classes(config.get("classes") or [], project_classes)
    except DistillationError as refused:
        error = str(refused)
    warnings = []
    if teacher.params_m is not None and student.params_m is not None and student.params_m > teacher.params_m:
        warnings.append(f"the student {student_backbone} has more parameters ({student.params_m} M) than the "
                        f"teacher's backbone {spec.get('name')} ({teacher.params_m} M): it will not be smaller.")
    if teacher_input and student_input and student_input > teacher_input:
        warnings.append(f"the student's input ({student_input} px) is larger than the teacher's ({teacher_input} px):"
                        " it will be slower per image. Pick a smaller input size.")
    return Preview(error[:1].upper() + error[1:] if error else None, warnings, teacher.params_m, student.params_m,
                   teacher_input, student_input)


def distillation_work(request: DistillRequest) -> Callable[[JobContext], dict]:
    """The job function: distil, write the student run folder, record it in the project."""

    def work(context: JobContext) -> dict:
        from .distill import distill_run
        from .store import Project

        project = Project(request.project_path)
        try:
            context.progress("reading the images", 0, 1)
            images = project.image_set(labeled_only=not request.use_pool)
            out_dir = runs_dir(project.path) / new_run_name("distilled")
            context.progress(f"loading the teacher and {request.student_backbone}", 0, 1)
            try:
                with interrupt_check(context.check_cancelled):
                    result = distill_run(request.teacher_run, images, out_dir,
                                         student_backbone=request.student_backbone, weights=request.weights,
                                         input_size=request.input_size, epochs=request.epochs,
                                         temperature=request.temperature, alpha=request.alpha,
                                         use_pool=request.use_pool, on_step=context.step,
                                         on_progress=lambda phase, done, total: context.progress(
                                             DISTILL_PHASES.get(phase, phase), done, total))
            except BaseException:
                shutil.rmtree(out_dir.with_name(out_dir.name + PARTIAL_SUFFIX), ignore_errors=True)
                raise
            config = json.loads((result.run.run_dir / "config.json").read_text(encoding="utf-8"))
            run_id = project.record_run(result.run.run_dir, config, images.labeled())
            return {"run_dir": str(result.run.run_dir), "run_id": run_id, "metrics": result.run.metrics,
                    "warnings": result.warnings, "teacher_accuracy": result.teacher_accuracy}
        finally:
            project.close()

    return work


def submit_distillation(queue: JobQueue, request: DistillRequest, *, owner: str) -> str:
    """Queue a request; returns the job id. ``meta`` carries the request and ``params.epochs`` for the progress bar."""
    meta = {**asdict(request), "kind": "distill", "params": {"epochs": request.epochs}}
    return queue.submit(distillation_work(request), title=request.title(), owner=owner, meta=meta)
