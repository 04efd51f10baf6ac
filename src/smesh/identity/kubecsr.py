"""Certificates through the Kubernetes CSR API: the agent's :class:`CertificateSource` on a cluster.

The agent files a certificates.k8s.io/v1 CertificateSigningRequest for the signer
``smesh.io/workload-identity`` as its own ServiceAccount, with the token the kubelet projects
into its pod. That token is bound to the pod, so the API server records the pod's name and UID
(and, on recent versions, its node) in the CSR's ``spec.extra``; the smesh controller
(:mod:`smesh.controller`) signs only identities of pods bound to that node. The key never
leaves the node: only the PKCS#10 request does.

The manager calls :meth:`KubeCsrSource.sign` in a worker thread; each call runs its own
short event loop with its own client, which also re-reads the projected token file (the
kubelet rotates it) every time.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from lightkube import AsyncClient
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.core_v1 import ConfigMap

from smesh.identity.bundle import TrustBundle
from smesh.identity.errors import CaError, NotEntitled, SignerUnavailable
from smesh.identity.signer import IssuedCertificate
from smesh.kubernetes.client import Kind, KubeApi, Selection, load_config
from smesh.kubernetes.errors import KubernetesError
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.protocol import Bookmark
from smesh.kubernetes.store import Event, EventType

log = logging.getLogger("smesh.kubecsr")

SIGNER_NAME = "smesh.io/workload-identity"
USAGES = ["digital signature", "server auth", "client auth"]
BUNDLE_CONFIGMAP = "smesh-trust-bundle"
BUNDLE_KEY = "roots.pem"
#: The root the controller signs with now (smesh.controller.secretca.SIGNING_KEY).
SIGNING_KEY = "signing.pem"
#: The API server's floor for spec.expirationSeconds.
MIN_EXPIRATION = 600
#: How long a request waits for the controller's answer by default.
DEFAULT_TIMEOUT = 30.0

CONFIGMAPS: Kind[ConfigMap] = Kind(ConfigMap, "/api/v1", "configmaps", namespaced=True)
CSRS: Kind[CertificateSigningRequest] = Kind(
    CertificateSigningRequest, "/apis/certificates.k8s.io/v1", "certificatesigningrequests", False
)


class CsrTimeout(SignerUnavailable):
    """No answer to a CSR within identity.csrTimeout."""


def _answer(csr: CertificateSigningRequest) -> bytes | None:
    """The certificate chain if signed; raises if denied or failed; None while pending."""
    status = csr.status
    if status is None:
        return None
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        name = csr.metadata.name if csr.metadata else "?"
        why = f"{condition.reason}: {condition.message}" if condition.message else condition.reason
        if condition.type == "Denied":
            raise NotEntitled(f"CSR {name} denied ({why})")
        if condition.type == "Failed":
            raise CaError(f"CSR {name} failed ({why})")
    if status.certificate:
        return base64.b64decode(status.certificate)
    return None


def with_signing_root(bundle: TrustBundle, pem: str | None, where: str) -> TrustBundle:
    """*bundle* naming its signing root, if *pem* is one of its roots (older controllers
    publish none: no early renewal after a rotation then, only at half-life)."""
    if not pem:
        return bundle
    try:
        signing = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        log.warning("%s: %s holds no PEM certificate; ignored", where, SIGNING_KEY)
        return bundle
    if signing not in bundle.roots:
        log.warning("%s: %s is not one of the roots in %s; ignored", where, SIGNING_KEY, BUNDLE_KEY)
        return bundle
    return TrustBundle(bundle.roots, signing)


class KubeCsrSource:
    """A :class:`~smesh.identity.signer.CertificateSource` backed by the cluster's CSR API."""

    def __init__(
        self,
        node: str,
        lifetime: dt.timedelta,
        *,
        kubeconfig: Path | None = None,
        namespace: str = "smesh-system",
        timeout: float = DEFAULT_TIMEOUT,
        on_answer: Callable[[str], None] | None = None,
    ) -> None:
        self.node = node
        self.expiration = max(MIN_EXPIRATION, int(lifetime.total_seconds()))
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.timeout = timeout
        self._on_answer = on_answer
        load_config(kubeconfig)  # a missing configuration fails the agent's start, not a pod

    def _config(self) -> SingleConfig:
        return load_config(self.kubeconfig)

    # -- CertificateSource ---------------------------------------------------------------

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        try:
            chain = asyncio.run(self._sign(csr_pem))
        except CsrTimeout:
            self._count("timeout")
            raise
        except NotEntitled:
            self._count("denied")
            raise
        except CaError:
            self._count("failed")
            raise
        except SignerUnavailable:
            self._count("error")
            raise
        self._count("issued")
        return IssuedCertificate(chain, self.bundle().pem().encode())

    def _count(self, result: str) -> None:
        if self._on_answer is not None:
            self._on_answer(result)

    def bundle(self) -> TrustBundle:
        return asyncio.run(self._bundle())

    async def follow_bundle(self, changed: Callable[[], Awaitable[None]]) -> None:
        """Call *changed* whenever the trust bundle ConfigMap changes, forever.

        So a rotation's new root reaches the agent within a watch event, not at its next
        bundle poll (every 5 minutes). The informer retries API errors by itself.
        """
        api = KubeApi(self._config())
        selection = Selection(
            namespace=self.namespace, field_selector=f"metadata.name={BUNDLE_CONFIGMAP}"
        )
        try:
            async for item in Informer(api, CONFIGMAPS, selection).events():
                if isinstance(item, Event) and item.type is not EventType.DELETED:
                    await changed()
        finally:
            await api.aclose()

    # -- the requests ----------------------------------------------------------------------

    async def _bundle(self) -> TrustBundle:
        client = AsyncClient(config=self._config())
        try:
            cm = await client.get(ConfigMap, BUNDLE_CONFIGMAP, namespace=self.namespace)
        except ApiError as exc:
            raise SignerUnavailable(
                f"cannot read the trust bundle ConfigMap {self.namespace}/{BUNDLE_CONFIGMAP}: "
                f"{exc.status.message} (is the smesh controller running?)"
            ) from None
        except Exception as exc:
            raise SignerUnavailable(f"cannot reach the Kubernetes API: {exc!r}") from None
        finally:
            await client.close()
        data = cm.data or {}
        pem = data.get(BUNDLE_KEY)
        if not pem:
            raise SignerUnavailable(f"{self.namespace}/{BUNDLE_CONFIGMAP} has no {BUNDLE_KEY}")
        bundle = TrustBundle.from_pem(pem)
        return with_signing_root(
            bundle, data.get(SIGNING_KEY), f"{self.namespace}/{BUNDLE_CONFIGMAP}"
        )

    async def _sign(self, csr_pem: bytes) -> bytes:
        config = self._config()
        client = AsyncClient(config=config, field_manager=f"smesh-agent/{self.node}")
        api = KubeApi(config)
        try:
            request = CertificateSigningRequest(
                metadata=ObjectMeta(generateName=f"smesh-{self.node}-"),
                spec=CertificateSigningRequestSpec(
                    request=base64.b64encode(csr_pem).decode(),
                    signerName=SIGNER_NAME,
                    usages=USAGES,
                    expirationSeconds=self.expiration,
                ),
            )
            try:
                created = await client.create(request)
            except ApiError as exc:
                raise SignerUnavailable(
                    f"the API server refused the CSR: {exc.status.message}"
                ) from None
            assert created.metadata is not None
            name = created.metadata.name or ""
            log.debug("filed CSR %s", name)
            return await self._wait(api, created, name)
        except (KubernetesError, OSError) as exc:
            raise SignerUnavailable(f"cannot reach the Kubernetes API: {exc}") from None
        finally:
            await api.aclose()
            await client.close()

    async def _wait(self, api: KubeApi, created: CertificateSigningRequest, name: str) -> bytes:
        answer = _answer(created)
        if answer is not None:
            return answer
        assert created.metadata is not None
        version = created.metadata.resourceVersion or ""
        deadline = time.monotonic() + self.timeout
        selection = Selection(field_selector=f"metadata.name={name}")
        while (remaining := deadline - time.monotonic()) > 0:
            stream = api.watch(CSRS, selection, version, max(1, int(remaining)))
            try:
                async with asyncio.timeout(remaining + 1):
                    async for item in stream:
                        if isinstance(item, Bookmark):
                            version = item.resource_version
                            continue
                        if item.obj.metadata is not None:
                            version = item.obj.metadata.resourceVersion or version
                        answer = _answer(item.obj)
                        if answer is not None:
                            return answer
            except TimeoutError:
                break
            finally:
                await stream.aclose()
        raise CsrTimeout(
            f"CSR {name} got no answer within {self.timeout:g} s: is the smesh controller "
            f"running (kubectl -n {self.namespace} get pods,lease)? "
            f"`kubectl get csr {name}` shows its state"
        )
