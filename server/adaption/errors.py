"""Typed failures of adaption, with the HTTP answer each gets (server/errors.py)."""

from __future__ import annotations

from server.errors import ServerError


class AdaptionError(ServerError):
    """Base of adaption's errors."""


class JobNotFound(AdaptionError):
    status, type, code, param = 404, "invalid_request_error", "fine_tuning_job_not_found", "fine_tuning_job_id"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Fine-tuning job {job_id!r} does not exist.")
        self.job_id = job_id


class AdapterInTraining(AdaptionError):
    """Another key's job is training this adapter name: never joined, never shown (409)."""

    status, type, code, param = 409, "invalid_request_error", "adapter_name_taken", "suffix"

    def __init__(self, adapter: str) -> None:
        super().__init__(f"The adapter name `{adapter}` is taken; choose another `suffix`/`lora_name`.")
        self.adapter = adapter


class JobFinished(AdaptionError):
    status, type, code, param = 400, "invalid_request_error", "job_already_finished", "fine_tuning_job_id"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"Fine-tuning job {job_id!r} has already {status}; it cannot be cancelled.")
        self.job_id = job_id


class NothingToLearn(AdaptionError):
    """A memory group holds no statement about the user that a question could ask about."""

    code = "nothing_to_learn"

    def __init__(self, group: str, memories: int) -> None:
        super().__init__(
            f"Memory group {group!r} holds no facts about the user to learn from ({memories} memories, none a"
            " statement such as 'My dog is called Rex.' or 'I live in Porto.'), so there is nothing to train."
        )


class WorkerFailed(AdaptionError):
    """The training process stopped without a result."""

    code = "training_failed"

    def __init__(self, exit_code: int | None, last_line: str) -> None:
        super().__init__(f"The training process stopped with exit code {exit_code}: {last_line}")


class BaseModelNotServed(AdaptionError):
    """A job (or a fine-tuning trigger) for a model this server does not serve."""

    status, type, code, param = 404, "invalid_request_error", "model_not_found", "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` is not served here, so no adapter of it can be trained.")
        self.model = model
