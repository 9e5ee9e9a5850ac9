"""Generated pictures in S3-compatible object storage (AWS S3, MinIO, SeaweedFS), so that several front ends serve
the same pictures: ``<prefix>/<name>.png`` objects written and read through boto3.

A store that does not answer must fail a request quickly, not hang an image job: botocore gets short connect and
read timeouts and one retry, and its connection failures, timeouts and 5xx answers become ``StoreUnavailable``
(503 with Retry-After; nothing stored is lost). A store that answers "no" (access denied, no such bucket) is a
``StorageError`` that says what to fix. Imported only when ``AIPC_IMAGE_STORE_URL`` is set (boto3 is the optional
``aipc-chat[team]`` extra).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from aipc_chat.engines.store import NAME_RE, ImageStore
from aipc_chat.errors import StartupError, StorageError, StoreUnavailable

if TYPE_CHECKING:
    from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0  # seconds: a store that is down is known at once, not after a long wait
READ_TIMEOUT = 15.0  # seconds without a byte: a picture is a few MB at most
ATTEMPTS = 2  # in all: one retry, for a dropped connection
PROBE_TIMEOUT = 2.0  # seconds, to connect and to answer: /ready's look at the bucket, made once, without a retry
DELETE_BATCH = 1000  # delete_objects takes at most this many keys
CHUNK = 64 * 1024
UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "403"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def parse_store_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end); StartupError for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StartupError(f"AIPC_IMAGE_STORE_URL takes s3://bucket/prefix (the prefix may be left out); got {url!r}.")
    return parts.netloc, parts.path.strip("/")


class S3ImageStore(ImageStore):
    """Pictures as ``<prefix>/<name>.png`` objects of one bucket, pruned to the newest ``max_images``; with
    ``url_expiry`` > 0 clients get presigned URLs valid that many seconds."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None, max_images: int = 1000,
                 url_expiry: int = 0, client: Any = None) -> None:
        self.bucket, self.prefix, self.endpoint = bucket, prefix.strip("/"), endpoint
        self.max_images = max_images
        self.url_expiry = url_expiry
        self.where = f"bucket '{bucket}' at {endpoint or 'AWS S3'}"
        # One session: the probe, made later, uses the credentials the store was made with (the session keeps them)
        self._session = boto3.session.Session()
        self._client = client if client is not None else _client(self._session, endpoint)
        self._probe: Any = client  # check()'s client, quick to give up on a silent store; made on first use
        # Listing the bucket costs a request per 1000 pictures: prune on the first save, then every Nth (going at
        # most a tenth over the limit in between).
        self._prune_every = max(1, min(50, max_images // 10))
        self._saves = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ImageStore:
        """The store of ``AIPC_IMAGE_STORE_URL`` (credentials: boto3's own chain, the ``AWS_*`` variables)."""
        assert settings.image_store_url
        bucket, prefix = parse_store_url(settings.image_store_url)
        return cls(bucket, prefix, endpoint=settings.s3_endpoint, max_images=settings.image_retention,
                   url_expiry=settings.image_url_expiry)

    def key(self, name: str) -> str:
        """The object key of a picture."""
        return f"{self.prefix}/{name}.png" if self.prefix else f"{name}.png"

    def _write(self, name: str, data: bytes) -> None:
        """One PUT, acknowledged only once S3 has confirmed it (and checked the bytes against their MD5)."""
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        with self._translated("store the picture"):
            self._client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data, ContentType="image/png",
                                    ContentMD5=md5)

    def read(self, name: str) -> bytes | None:
        """The PNG bytes of a stored picture, or None."""
        body = self._get(name)
        if body is None:
            return None
        with contextlib.closing(body), self._translated("read the picture"):
            return bytes(body.read())

    def open(self, name: str) -> Iterator[bytes] | None:
        """The PNG in chunks, to stream through the server; None when unknown."""
        body = self._get(name)
        return None if body is None else self._chunks(body)

    def _chunks(self, body: Any) -> Iterator[bytes]:
        with contextlib.closing(body), self._translated("read the picture"):
            yield from body.iter_chunks(CHUNK)

    def _get(self, name: str) -> Any:
        """The object's streaming body, or None when there is no such picture."""
        if not NAME_RE.match(name):
            return None
        try:
            with self._translated("read the picture"):
                return self._client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        except _Missing:
            return None

    def exists(self, name: str) -> bool:
        """Whether the bucket holds the picture (a HEAD request)."""
        if not NAME_RE.match(name):
            return False
        try:
            with self._translated("look up the picture"):
                self._client.head_object(Bucket=self.bucket, Key=self.key(name))
        except _Missing:
            return False
        return True

    def link(self, name: str) -> str | None:
        """A presigned GET URL valid ``url_expiry`` seconds (made here, no request), or None when URLs go through
        the server (``url_expiry`` 0)."""
        if not self.url_expiry or not NAME_RE.match(name):
            return None
        with self._translated("sign a picture URL"):
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)}, ExpiresIn=self.url_expiry)
        return url

    def check_free_space(self, min_free_mb: int) -> None:
        """Nothing to check: a bucket has no free space to read (a full one refuses the PUT: StorageError)."""

    def check(self) -> str | None:
        """Why the bucket cannot be used now (no answer, access refused, no such bucket), or None."""
        with self._lock:  # a boto3 session is not safe to make clients from in two threads at once
            if self._probe is None:
                self._probe = _client(self._session, self.endpoint, timeout=PROBE_TIMEOUT, attempts=1)
        try:
            with self._translated("reach the bucket"):
                self._probe.head_bucket(Bucket=self.bucket)
        except _Missing:
            return f"There is no bucket '{self.bucket}' at {self.endpoint or 'AWS S3'}: create it, or fix " \
                   "AIPC_IMAGE_STORE_URL."
        except (StorageError, StoreUnavailable) as exc:
            return exc.message
        return None

    def _prune(self) -> None:
        with self._lock:
            self._saves += 1
            due = (self._saves - 1) % self._prune_every == 0
        if due:
            try:
                self.prune()
            except (StorageError, StoreUnavailable) as exc:  # the picture is stored: a late prune is no failure
                log.warning("could not prune old pictures in %s: %s", self.where, exc.message)

    def delete(self, names: Iterable[str]) -> int:
        """Delete the pictures' objects, a thousand keys per request."""
        return self._delete([self.key(n) for n in dict.fromkeys(names) if NAME_RE.match(n)], "delete pictures")

    def _delete(self, keys: list[str], action: str) -> int:
        """Delete these keys in batches; how many S3 did not refuse (each refusal is logged)."""
        deleted = 0
        for at in range(0, len(keys), DELETE_BATCH):
            batch = keys[at: at + DELETE_BATCH]
            with self._translated(action):
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            errors = answer.get("Errors", ())
            for error in errors:
                log.warning("could not delete %s in %s: %s", error.get("Key"), self.where, error.get("Message"))
            deleted += len(batch) - len(errors)
        return deleted

    def prune(self) -> int:
        """Delete the oldest pictures beyond ``max_images`` (by LastModified); how many were deleted. Only keys
        of pictures (``<prefix>/<name>.png``) are counted or deleted: anything else in the bucket is left alone."""
        found: list[tuple[Any, str]] = []
        start = f"{self.prefix}/" if self.prefix else ""
        with self._translated("list the pictures"):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                found.extend((item["LastModified"], item["Key"]) for item in page.get("Contents", ())
                             if NAME_RE.match(item["Key"][len(start):].removesuffix(".png"))
                             and item["Key"].endswith(".png"))
        found.sort()  # oldest first; the key breaks ties (LastModified has a resolution of a second)
        old = [key for _, key in found[: max(0, len(found) - self.max_images)]]
        self._delete(old, "delete old pictures")
        if old:
            log.info("pruned %d old pictures in %s", len(old), self.where)
        return len(old)

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """botocore's failures as ours, saying where and what to do."""
        try:
            yield
        except (BotoConnectionError, HTTPClientError) as exc:
            raise self._unavailable(action, _failure(exc)) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageError(f"Could not {action} in {self.where}: {exc}. Set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or another source boto3 reads).") from exc
        except ClientError as exc:
            raise self._refused(action, exc) from exc
        except BotoCoreError as exc:
            raise StorageError(f"Could not {action} in {self.where}: {exc}.") from exc

    def _unavailable(self, action: str, reason: str) -> StoreUnavailable:
        return StoreUnavailable(f"The picture store ({self.where}) does not answer ({reason}), so this server "
                                f"could not {action}. Nothing already stored is lost; retry shortly.")

    def _refused(self, action: str, exc: ClientError) -> Exception:
        error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        code, status = str(error.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
        if status >= 500 or code in UNAVAILABLE_CODES:
            return self._unavailable(action, f"{status} {code}".strip())
        if code in MISSING_CODES:
            return _Missing()
        if code == "NoSuchBucket":
            return StorageError(f"There is no bucket '{self.bucket}' at {self.endpoint or 'AWS S3'} to {action} "
                                "in: create it, or fix AIPC_IMAGE_STORE_URL.")
        if code in DENIED_CODES or status == 403:
            return StorageError(f"{self.where} refused to let this server {action} ({code}): check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's rights on the bucket.")
        return StorageError(f"{self.where} refused to {action} ({code or status}: {error.get('Message', '')}).")


def _failure(exc: Exception) -> str:
    """What went wrong with the connection, in words (botocore's own message names the object's URL: the picture's
    name, which is its capability, stays out of what clients read)."""
    if isinstance(exc, ConnectTimeoutError):
        return "connecting timed out"
    if isinstance(exc, ReadTimeoutError):
        return "it stopped answering mid-way"
    if isinstance(exc, EndpointConnectionError):
        return "could not connect"
    return f"the connection failed: {type(exc).__name__}"


class _Missing(Exception):
    """No such object (or bucket, for a HEAD request, which has no error code to tell them apart)."""


def _client(session: Any, endpoint: str | None, *, timeout: float | None = None, attempts: int = ATTEMPTS) -> Any:
    """A boto3 S3 client that fails fast: short timeouts (``timeout`` for both, if given), one retry; path-style
    addressing for an S3-compatible server (which seldom has a DNS name per bucket); checksums only where S3 requires
    them (recent botocore adds trailing checksums by default, which not every S3-compatible server takes; our PUT
    sends its MD5)."""
    config = Config(connect_timeout=timeout or CONNECT_TIMEOUT, read_timeout=timeout or READ_TIMEOUT,
                    retries={"total_max_attempts": attempts, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint else None, signature_version="s3v4",
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    return session.client("s3", endpoint_url=endpoint, config=config)
