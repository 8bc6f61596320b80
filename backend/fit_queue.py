"""Queueing fine-tuning on RQ: annotation counters, one pending job per project, job status.

Redis keys (all under ``focuscut:``):

- ``new:<project>``    annotations created/updated since the last completed job (int)
- ``pending:<project>`` id of the project's queued or running job, if any
- ``jobs:<project>``   the project's recent job ids, newest first (at most ``JOB_HISTORY``)
- ``projects``         every project that ever sent an event (set; the scheduler walks it)

A burst of events coalesces: while ``pending`` names a job that is queued, scheduled or running,
no other job is created and the event answers with that job's id (its count still goes into
``new``; a job that completes subtracts only the count it saw at its start, and queues a follow-up
when enough new annotations came in meanwhile; a failed job subtracts nothing). Check-and-enqueue runs under a short Redis lock,
so concurrent webhooks of one project cannot create two jobs.

Redis unreachable: ``RedisUnavailable``; the event's count is kept in this process and added on
the next call that reaches Redis (a restart loses it; Label Studio still holds every annotation,
so a START_TRAINING or a later event trains on all of them anyway).
"""
from __future__ import annotations

import threading
import uuid
from collections import Counter

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

QUEUE = "focuscut"
PREFIX = "focuscut:"
JOB_HISTORY = 50
ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
TRAIN_EVENTS = ANNOTATION_EVENTS + ("START_TRAINING",)
JOB_FUNC = "backend.train_job.train_project"


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached: nothing could be queued."""


def key(name: str, project: str | None = None) -> str:
    return PREFIX + name + (f":{project}" if project is not None else "")


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=5)


class _Unsent:
    """Annotation counts of events that arrived while Redis was down (per process)."""

    def __init__(self):
        self._lock, self._counts = threading.Lock(), Counter()

    def add(self, project: str, n: int) -> None:
        with self._lock:
            self._counts[project] += n

    def flush(self, conn: redis.Redis) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        try:
            for project, n in counts.items():
                conn.incrby(key("new", project), n)
                conn.sadd(key("projects"), project)
        except redis.RedisError:
            with self._lock:
                self._counts.update(counts)
            raise


UNSENT = _Unsent()


def pending_job(conn: redis.Redis, project: str) -> Job | None:
    """The project's queued/scheduled/running job, if there is one."""
    job_id = conn.get(key("pending", project))
    if job_id is None:
        return None
    try:
        job = Job.fetch(job_id.decode(), connection=conn)
    except NoSuchJobError:
        return None
    return job if job.get_status() in ACTIVE else None


def enqueue_training(conn: redis.Redis, project: str, trigger: str, settings) -> Job:
    """A new training job for ``project`` (no coalescing: see ``request_training``)."""
    budget = settings.train_max_seconds
    job = Queue(QUEUE, connection=conn).enqueue_call(
        JOB_FUNC, args=(str(project),), job_id=f"fit-{project}-{uuid.uuid4().hex[:10]}",
        # fetching and the two evaluations come on top of the training budget
        timeout=int(3 * budget + 900), result_ttl=7 * 86400, failure_ttl=7 * 86400,
        retry=Retry(max=1), description=f"fine-tune project {project} ({trigger})",
        meta={"project": str(project), "trigger": trigger, "stage": "queued"})
    with conn.pipeline() as pipe:
        pipe.set(key("pending", project), job.id)
        pipe.lpush(key("jobs", project), job.id)
        pipe.ltrim(key("jobs", project), 0, JOB_HISTORY - 1)
        pipe.execute()
    return job


def request_training(conn: redis.Redis, project: str, trigger: str, settings, count: int = 0) -> dict:
    """Count ``count`` new annotations, then start a job if none is pending and either
    ``trigger`` is START_TRAINING or enough annotations are new. Returns what happened:
    ``{"project", "status": "queued"|"coalesced"|"waiting", "job_id", "new_annotations", "min_annotations"}``."""
    project, counted = str(project), False
    try:
        UNSENT.flush(conn)
        with conn.pipeline() as pipe:
            pipe.incrby(key("new", project), count)
            pipe.sadd(key("projects"), project)
            new, counted = int(pipe.execute()[0]), True
        with conn.lock(key("lock", project), timeout=10, blocking_timeout=5):
            job = pending_job(conn, project)
            if job is not None:
                status = "coalesced"
            elif trigger == "START_TRAINING" or new >= settings.train_min_annotations:
                job, status = enqueue_training(conn, project, trigger, settings), "queued"
            else:
                status = "waiting"
    except redis.RedisError as exc:
        if not counted:
            UNSENT.add(project, count)
        kept = ("the event was counted in this process and will be added when Redis returns" if count
                else "send it again when Redis is back")
        raise RedisUnavailable(f"Redis is unreachable ({type(exc).__name__}): training cannot be queued "
                               f"now; {kept}") from exc
    return {"project": project, "status": status, "job_id": job.id if job else None,
            "new_annotations": new, "min_annotations": settings.train_min_annotations}


def job_status(job: Job) -> dict:
    """What the HTTP API shows of a job (read fresh from Redis)."""
    job.refresh()
    status = job.get_status()
    info = {"id": job.id, "state": status.value if status else None, "project": job.meta.get("project"),
            "description": job.description, "meta": job.meta,
            "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
            "retries_left": job.retries_left}
    if status == JobStatus.FINISHED:
        info["result"] = job.return_value()
    elif status == JobStatus.FAILED:
        result = job.latest_result()
        lines = (result.exc_string or "").strip().splitlines() if result else []
        info["error"] = lines[-1] if lines else "failed"
    return info


def project_jobs(conn: redis.Redis, project: str) -> list[dict]:
    """Status of the project's recent jobs, newest first (expired ones left out)."""
    ids = [i.decode() for i in conn.lrange(key("jobs", str(project)), 0, -1)]
    return [job_status(j) for j in Job.fetch_many(ids, connection=conn) if j is not None]


def finish(conn: redis.Redis, project: str, job_id: str | None, seen: int, settings) -> dict | None:
    """After a completed job: subtract the ``seen`` annotations it started with, release the
    project's pending slot, and queue a follow-up if enough annotations arrived meanwhile."""
    project = str(project)
    with conn.lock(key("lock", project), timeout=10, blocking_timeout=5):
        left = int(conn.decrby(key("new", project), seen))
        if left < 0:
            conn.incrby(key("new", project), -left)
            left = 0
        pending = conn.get(key("pending", project))
        if pending is not None and job_id is not None and pending.decode() == job_id:
            conn.delete(key("pending", project))
    if left >= settings.train_min_annotations:
        return request_training(conn, project, "FOLLOW_UP", settings)
    return None
