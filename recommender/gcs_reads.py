"""The model store's names and its Cloud Storage reads, importable without numpy.

`recommender.prefetch` starts reading the `PRELOAD_SHOPS` models from gs:// at the top of `main`, before
numpy and the serving modules are imported (bench/PERFORMANCE.md, round 13); this module is all it needs
besides the standard library. `recommender.model_store` builds its stores on the same pieces.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Mapping

from recommender.errors import ArtifactError, ConfigError, InvalidParameter

LATEST = "latest.json"
_SHOP = re.compile(r"^[a-z0-9][a-z0-9.-]{0,254}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a version names files and objects
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")  # Cloud Storage bucket naming rules


class ModelStoreUnavailable(ArtifactError):
    """The model store could not be reached or refused a request; retrying later may succeed."""


def parse_gcs_url(url: str) -> tuple[str, str]:
    """'gs://bucket/some/prefix/' → ('bucket', 'some/prefix')."""
    bucket, _, prefix = url[len("gs://"):].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"MODEL_STORE_URL must name a Cloud Storage bucket, as in gs://bucket/models; got {url!r}")
    parts = [part for part in prefix.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise ConfigError(f"MODEL_STORE_URL: the prefix may not contain '.' or '..' segments; got {url!r}")
    return bucket, "/".join(parts)


def check_shop_domain(shop: str) -> str:
    """A shop domain as used for keys and paths: lower-case host name characters only."""
    if not isinstance(shop, str) or not _SHOP.match(shop) or ".." in shop:
        raise InvalidParameter("shop", f"shop must be a shop domain such as 'example.myshopify.com', got {shop!r}")
    return shop


def check_version(version: str) -> str:
    """A version becomes a file or object name: letters, digits, '.', '_' and '-' only."""
    if not isinstance(version, str) or not _VERSION.match(version) or ".." in version:
        raise ArtifactError(f"model version must be letters, digits, '.', '_' or '-', got {version!r}")
    return version


def object_key(prefix: str, shop: str, name: str) -> str:
    """The object name of a shop's file under a store's prefix."""
    check_shop_domain(shop)
    return f"{prefix}/{shop}/{name}" if prefix else f"{shop}/{name}"


class JsonApiReads:
    """Cloud Storage objects read over its JSON API with `http.client`, which a serving instance has imported
    already (werkzeug's server imports it). google-cloud-storage took 135–210 ms to import on the benchmark
    machine, and a new instance's first shopper paid for it when the model store was gs:// (bench/PERFORMANCE.md).

    For the serving reads only (the pointer, manifests, artifacts), and only where they need none of the client
    library's credentials: against STORAGE_EMULATOR_HOST, which takes none, and on Cloud Run and Cloud
    Functions (K_SERVICE is set there), with the service account's access token from the metadata server
    (GCE_METADATA_HOST, else metadata.google.internal), kept until a minute before it expires. Anywhere else
    (a laptop with gcloud's credentials, say) google-cloud-storage reads, as it writes everywhere. Each thread
    keeps one connection to the endpoint. A missing object is None; any other refusal, a network failure or no
    token raises ModelStoreUnavailable, naming what was being read.
    """

    PUBLIC_ENDPOINT = "https://storage.googleapis.com"
    TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
    TIMEOUT_SECONDS = 30.0

    def __init__(self, bucket: str, endpoint: str, metadata_host: str | None = None, generation_header: bool = False):
        """`generation_header`: the endpoint answers a media download with the object's generation in
        X-Goog-Generation, as Cloud Storage does (google-cloud-storage pins a download's later requests by it);
        gcp-storage-emulator sends no such header."""
        from urllib.parse import quote, urlsplit

        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Cloud Storage endpoint must be http(s)://host[:port], got {endpoint!r}")
        self._secure = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._bucket_path = f"/storage/v1/b/{quote(bucket, safe='')}/o/"
        self._quote = quote
        self._metadata_host = metadata_host
        self.generation_header = generation_header
        self._token: tuple[str, float] | None = None  # (access token, monotonic time to fetch a new one)
        self._token_lock = threading.Lock()  # also guards making the TLS context
        self._local = threading.local()
        self._tls: Any = None  # the ssl.SSLContext of https endpoints, made on first use

    @classmethod
    def for_environment(cls, bucket: str, env: Mapping[str, str]) -> "JsonApiReads | None":
        emulator = env.get("STORAGE_EMULATOR_HOST")
        if emulator:
            return cls(bucket, emulator)
        if env.get("K_SERVICE"):
            return cls(bucket, cls.PUBLIC_ENDPOINT, env.get("GCE_METADATA_HOST") or "metadata.google.internal",
                       generation_header=True)
        return None

    def media(self, key: str, where: str, generation: int | None = None) -> bytes | None:
        """The object's bytes (that generation's, if given), or None if it does not exist."""
        query = "alt=media" if generation is None else f"alt=media&generation={generation}"
        found = self._get(f"{self._bucket_path}{self._quote(key, safe='')}?{query}", f"reading {where}")
        return None if found is None else found[0]

    def media_and_generation(self, key: str, where: str) -> tuple[bytes, int | None] | None:
        """The object's current bytes and, from the same answer's X-Goog-Generation, the generation they are
        (None where the endpoint does not say); None if the object does not exist. One request."""
        found = self._get(f"{self._bucket_path}{self._quote(key, safe='')}?alt=media", f"reading {where}")
        if found is None:
            return None
        body, header = found
        try:
            return body, int(header) if header is not None else None
        except ValueError:
            return body, None

    def generation(self, key: str, where: str) -> int | None:
        """The object's current generation, or None if it does not exist."""
        found = self._get(f"{self._bucket_path}{self._quote(key, safe='')}?fields=generation", f"reading {where}")
        if found is None:
            return None
        try:
            return int(json.loads(found[0])["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStoreUnavailable(f"reading {where}: the object's metadata has no generation: {exc}") from exc

    def pointer(self, key: str, where: str) -> tuple[bytes, int] | None:
        """The `latest` pointer's bytes and the generation they are, or None if there is no pointer.

        Where the endpoint names a download's generation (Cloud Storage), one request; otherwise the
        generation first, then exactly that generation's bytes, read again if the pointer moved in between
        (a 404 for them), three times at most."""
        if self.generation_header:
            found = self.media_and_generation(key, where)
            if found is None:
                return None
            data, generation = found
            if generation is not None:
                return data, generation
        for _ in range(3):
            generation = self.generation(key, where)
            if generation is None:
                return None
            data = self.media(key, where, generation)
            if data is not None:
                return data, generation
        raise ModelStoreUnavailable(f"{where} kept moving while being read; retry")

    def _get(self, path: str, action: str) -> tuple[bytes, str | None] | None:
        """(the body, its X-Goog-Generation header or None), or None for a 404."""
        import http.client

        headers = {} if self._metadata_host is None else {"Authorization": f"Bearer {self._access_token(action)}"}
        for attempt in (1, 2):  # a kept connection the server has since closed fails once; a new one is tried
            connection = self._connection()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise ModelStoreUnavailable(f"{action} failed: {exc!r}") from exc
        if response.status == 404:
            return None
        if response.status == 401 and self._metadata_host is not None:
            with self._token_lock:  # refused before its time: the next read asks the metadata server again
                self._token = None
        if response.status != 200:
            raise ModelStoreUnavailable(f"{action} failed: HTTP {response.status}: {body[:300].decode(errors='replace')}")
        return body, response.getheader("X-Goog-Generation")

    def _connection(self) -> Any:
        import http.client

        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._secure:  # one TLS context for every thread's connection: making one reads the system's CAs (~20 ms)
                with self._token_lock:
                    if self._tls is None:
                        import ssl

                        self._tls = ssl.create_default_context()
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.TIMEOUT_SECONDS,
                                                         context=self._tls)
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self.TIMEOUT_SECONDS)
            self._local.connection = connection
        return connection

    def _access_token(self, action: str) -> str:
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._token[1]:
                self._token = self._fetch_token(action)
            return self._token[0]

    def _fetch_token(self, action: str) -> tuple[str, float]:
        import http.client

        connection = http.client.HTTPConnection(self._metadata_host, timeout=5.0)
        try:
            connection.request("GET", self.TOKEN_PATH, headers={"Metadata-Flavor": "Google"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise ModelStoreUnavailable(f"{action}: the metadata server at {self._metadata_host} gave no access"
                                            f" token: HTTP {response.status}: {body[:200].decode(errors='replace')}")
            fields = json.loads(body)
            return str(fields["access_token"]), time.monotonic() + max(0.0, float(fields["expires_in"]) - 60.0)
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
            raise ModelStoreUnavailable(f"{action}: no access token from the metadata server at"
                                        f" {self._metadata_host}: {exc!r}") from exc
        finally:
            connection.close()
