"""Is a model there before anything waits for it: a local folder, the HF cache, or a reachable Hub.

Without this, a model id that is not cached while the Hub cannot be reached costs minutes of retries inside
transformers and ends in a traceback. Here it is one request and one message saying what to do.
"""

from __future__ import annotations

import os


class ModelUnavailableError(ValueError):
    """The model is neither a local folder, nor in the HF cache, nor on a reachable Hub."""


def looks_local(name: str) -> bool:
    """A path rather than a Hub id: Hub ids are `name` or `owner/name`, never starting with `.`, `/` or `~`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or os.path.isdir(name)


def check_model_available(name: str, revision: str | None = None, what: str = "model_name_or_path") -> None:
    """Return quickly if `name` is a local folder, cached, or on a reachable Hub; else raise with what to do."""
    if looks_local(name):
        if not os.path.isdir(os.path.expanduser(name)):
            raise ModelUnavailableError(f"{what} {name!r} is not a folder (relative to {os.getcwd()}).")
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return
    download = f"download it where there is network (`hf download {name}`), then run with HF_HUB_OFFLINE=1"
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailableError(
            f"{what} {name!r} is not in the local HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: "
            f"{download}, or give a local folder."
        )
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ModelUnavailableError(
            f"{what} {name!r}{f' at revision {revision!r}' if revision else ''} is not on the Hub "
            f"({type(err).__name__}; a private or gated model needs `hf auth login`). Check the id."
        ) from None
    except HfHubHTTPError:
        return  # reachable (gated, rate-limited, ...): the loader's own message is more precise
    except Exception as err:  # noqa: BLE001 - connection refused, DNS, timeouts, proxies: the Hub is unreachable
        raise ModelUnavailableError(
            f"{what} {name!r} is not in the local HF cache and the Hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(err).__name__}: {err}): {download}, or give a local folder."
        ) from None
