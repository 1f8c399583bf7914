"""The ``s3`` publisher: any S3-compatible endpoint, through boto3 (no hand-written request signing).

The object key is ``<key_prefix><job_id>/<execution_id>.tar.gz``. An upload is idempotent by key: the
archive is deterministic, and an object already under the key with the archive's sha256 in its metadata
(``x-amz-meta-sha256``) is taken as published, so a try repeated after a crash does not upload it twice.
The agent never deletes an object.

Credentials come from the agent's configuration (``publishers.s3`` files) or, without files, from boto3's
standard chain (the AWS environment variables, shared credentials and config files, ...); never from a
desired document. botocore's own retries are off: the lifecycle's backoff is the one retry policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.protocol import PublishedResults, ResultsMetadata, S3Location, S3Publisher
from agent.results.errors import PublishError
from agent.results.pack import Packed

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError
    from mypy_boto3_s3 import S3Client

# boto3 and botocore are imported where they are used, not with this module: importing them costs about
# 0.3 s of CPU and 23 MB, at every start of every agent, and only a node with an s3 publisher needs them
# (S3Uploader imports them when it is made, so its first upload does not pay for it) (PLC0415).

Credentials = tuple[str, str]  # access key id, secret access key
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60
# Codes that say trying again cannot help until an operator changes something.
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
_FINAL_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "AllAccessDisabled", "AccountProblem"})


def environment_has_credentials() -> bool:
    """Whether boto3's standard chain finds credentials here (environment, shared files, ...)."""
    import botocore.session  # noqa: PLC0415

    return botocore.session.Session().get_credentials() is not None


class S3Uploader:
    """Uploads archives; thread-safe (boto3 clients are), one cached client per endpoint and identity."""

    def __init__(self, credentials: Callable[[], Credentials | None]) -> None:
        import boto3  # noqa: F401, PLC0415  (now, at start, rather than inside the first upload's deadline)

        self._credentials = credentials  # read at every upload: a rotated key file is picked up
        self._clients: dict[tuple[str | None, str, Credentials | None], S3Client] = {}
        self._lock = threading.Lock()

    def _client(self, publisher: S3Publisher) -> S3Client:
        credentials = self._credentials()
        key = (publisher.endpoint, publisher.region, credentials)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = make_client(publisher.endpoint, publisher.region, credentials)
                self._clients[key] = client
            return client

    def upload(self, packed: Packed, publisher: S3Publisher, key: str) -> PublishedResults:
        """Put the archive under ``key`` unless it is there already; raises :class:`PublishError`."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        client = self._client(publisher)
        bucket = publisher.bucket
        try:
            version_id = _existing_version(client, bucket, key, packed)
            if version_id is None:
                with packed.path.open("rb") as body:
                    response = client.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=body,
                        ContentLength=packed.size_bytes,
                        ContentType="application/gzip",
                        Metadata={"sha256": packed.sha256},
                    )
                version_id = response.get("VersionId") or ""
        except (BotoCoreError, ClientError) as exc:
            raise error_of(exc, publisher) from exc
        except OSError as exc:
            raise PublishError(f"cannot read the packed archive: {exc}", retryable=True) from exc
        return PublishedResults(
            storage_source="s3",
            name=packed.path.name,
            url=f"s3://{bucket}/{key}",
            s3=S3Location(
                bucket=bucket,
                key=key,
                endpoint=publisher.endpoint,
                region=publisher.region,
                version_id=version_id or None,
            ),
            metadata=ResultsMetadata(sha256=packed.sha256, size_bytes=packed.size_bytes, files=packed.files),
        )


def make_client(endpoint: str | None, region: str, credentials: Credentials | None) -> S3Client:
    """A client for ``endpoint`` (None: AWS) with explicit credentials, or the standard chain's."""
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    session = boto3.session.Session(
        aws_access_key_id=credentials[0] if credentials else None,
        aws_secret_access_key=credentials[1] if credentials else None,
        region_name=region,
    )
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"max_attempts": 1, "mode": "standard"},
        # S3-compatible servers vary in what they make of the newer default checksums; only send them
        # where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Path-style requests work with any endpoint (no bucket name in the host name to resolve).
        s3={"addressing_style": "path" if endpoint is not None else "auto"},
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def _existing_version(client: S3Client, bucket: str, key: str, packed: Packed) -> str | None:
    """The version id ("" when unversioned) of this very archive if it is already under ``key``."""
    from botocore.exceptions import ClientError  # noqa: PLC0415

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _status(exc) == 404 and _code(exc) not in _FINAL_CODES:
            return None
        raise
    # Metadata names are case-insensitive HTTP headers; some servers give them back capitalised.
    metadata = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
    same = metadata.get("sha256") == packed.sha256
    if same and head.get("ContentLength") == packed.size_bytes:
        return head.get("VersionId") or ""
    return None


def error_of(exc: BotoCoreError | ClientError, publisher: S3Publisher) -> PublishError:
    """A reason an operator can act on, and whether trying again may help."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError  # noqa: PLC0415

    where = publisher.endpoint or "AWS S3"
    if isinstance(exc, NoCredentialsError):
        return PublishError("no S3 credentials found on this node", retryable=False)
    if isinstance(exc, EndpointConnectionError):
        return PublishError(f"cannot connect to {where}: {exc}", retryable=True)
    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code in _CREDENTIAL_CODES or status == 403:
            return PublishError(
                f"{where} refused the credentials of publishers.s3 ({code or status}): {message}",
                retryable=False,
            )
        if code in _FINAL_CODES or (status == 404 and code != "NoSuchKey"):
            return PublishError(
                f"bucket {publisher.bucket!r} on {where}: {code or status}: {message}", retryable=False
            )
        return PublishError(f"{where} answered {status} {code}: {message}", retryable=True)
    return PublishError(f"{where}: {exc}", retryable=True)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
