"""Minimal Celery app of bench/bench_latency.py: RabbitMQ broker, Redis result backend.

Worker: ``celery -A bench.latency_celery worker --pool prefork -c 1``.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "latency",
    broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/0"),
)
app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1)


@app.task(name="short_job")
def short_job_task(symbol: str = "BTCUSDT") -> dict:
    """The short job (bench.latency_job.short_job) as a Celery task."""
    from bench.latency_job import short_job

    return short_job(symbol)


def http_app():  # noqa: ANN201 - a FastAPI app (imported lazily)
    """The Celery anchor of bench/bench_gateway.py: ``POST /delay`` calls ``delay()`` and
    answers 202 with the task id, as an HTTP gateway in front of Celery would.

    Serve: ``uvicorn bench.latency_celery:http_app --factory --port <port>``.
    """
    from fastapi import FastAPI

    api = FastAPI()

    @api.post("/delay", status_code=202)
    def delay() -> dict:
        return {"id": short_job_task.delay().id}

    return api
