"""An in-process HTTP stand-in for the Kubernetes API server.

Why this exists: no real API server can run where our tests run, and mocking
the ``kubernetes`` client would only test our assumptions about it.  Instead
this package serves the small slice of the Kubernetes REST API that
taiga-backup uses (Deployments, their ``scale`` subresource and Pods) over real
HTTP, so the *official* client can talk to it unchanged, including its
serialisation, content-type negotiation and error handling.

Realism choices that matter to callers (all mirror a real API server):

* Zero-valued fields are omitted like Go's ``omitempty``: a Deployment scaled
  to 0 has no ``status.replicas``/``readyReplicas``/``availableReplicas``, and
  an autoscaling/v1 Scale with 0 replicas has an empty ``spec`` (the client
  then reports ``spec.replicas`` as ``None``).  Empty ``annotations``/``labels``
  maps are dropped too.
* ``resourceVersion`` comes from one global counter and only changes when the
  object really changes; a no-op patch leaves it alone.  A patch or update
  carrying a stale ``metadata.resourceVersion`` gets 409 Conflict.
* Pods have a lifecycle in real time: new pods are Pending and become Ready
  after ``pod_start_delay``; surplus pods get a ``deletionTimestamp`` (still
  listed, "Terminating", still reporting their last readiness) and vanish
  after ``pod_stop_delay``.  Deployment status counts only non-terminating
  pods.  Time is evaluated lazily on every request/accessor, so behaviour
  follows the wall clock without a ticker thread.
* Errors are ``kind: Status`` JSON bodies with the reason/message/details
  layout the API server uses.

The parts, one job each: ``double`` (the KubeApiDouble facade callers hold),
``cluster`` (Deployments, resourceVersion, views, listing), ``pods`` (pod
lifecycle and Deployment status), ``validation`` (what a write may not do),
``patches`` (merge / strategic merge / JSON patch), ``selectors`` (label and
field selectors), ``routes`` (the REST endpoints served), ``faults`` (injected
failures), ``server`` (HTTP, auth, request log, watch streams) and ``status``
(the Status error envelope).  Only the standard library is used.
"""

from testkit.k8s_double.double import KubeApiDouble
from testkit.k8s_double.status import PatchError

__all__ = ["KubeApiDouble", "PatchError"]
