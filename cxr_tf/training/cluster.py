"""A multi-worker cluster that assembles within a time bound, or says which worker is missing.

    strategy = cluster.multi_worker_strategy(timeout=600)

TensorFlow's own wait for the other workers runs inside one C++ call that holds the Python
interpreter: no signal handler runs, so Ctrl-C does nothing, and its coordination service
installs a SIGTERM handler that only logs ("SIGTERM caught"), so `kill` does nothing either;
by default the wait has no end (TF 2.21: `cluster_register_timeout_in_ms` 0 and no register
barrier on the leader, `tensorflow/python/distribute/collective_all_reduce_strategy.py`
`_initialize_multi_worker`). So the wait happens here first, in Python:

1. every task answers on its own TF_CONFIG port while it waits, and polls the others' ports
   until all answer or `timeout` seconds pass (then ClusterError names the silent ones); a
   signal ends the wait like any other Python code (`errors.Interrupted`);
2. TensorFlow's coordination service is then configured to register every task behind a
   barrier bounded by the time left, so a worker lost in between still ends the wait with
   TensorFlow's DeadlineExceeded, turned into the same ClusterError; while TensorFlow holds
   the interpreter, Ctrl-C keeps its default action and ends the process at once;
3. the process's SIGTERM handler is put back once TensorFlow has replaced it.

During training a worker that dies is found by the coordination service's heartbeats (10 s
by default), which abort the collectives of every other worker. CommunicationOptions'
`timeout_seconds` is not used: TensorFlow starts a thread per collective op that sleeps for
the whole timeout (its documentation says: for debugging only).
"""

import contextlib
import os
import re
import signal
import socket
import threading
import time

import tensorflow as tf

from cxr_tf import errors
from cxr_tf.console import say
from cxr_tf.training import tf_config

COORDINATED_JOBS = ("chief", "worker")  # the tasks MultiWorkerMirroredStrategy waits for
_TASK_NAME = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


class ClusterError(errors.UserError, RuntimeError):
    """TF_CONFIG is unusable, or its cluster did not assemble within the timeout."""


def read_tf_config(environ=os.environ):
    """({job: [address, ...]}, (job, index) of this task) from TF_CONFIG, checked by TF's
    rules first (`tf_config.read`: one line for a spec that is not JSON or not a cluster)."""
    config = tf_config.read(environ)
    cluster = {job: [addresses[k] for k in sorted(addresses, key=int)]
               if isinstance(addresses, dict) else list(addresses)
               for job, addresses in config["cluster"].items()}
    return cluster, (config["task"]["type"], int(config["task"].get("index", 0)))


def multi_worker_strategy(timeout, environ=os.environ):
    """A MultiWorkerMirroredStrategy once every chief and worker task of TF_CONFIG is up,
    within `timeout` seconds (see the module docstring); ClusterError otherwise."""
    cluster, task = read_tf_config(environ)
    peers = {name: address for name, address in tasks(cluster).items() if name != task}
    deadline = time.monotonic() + timeout
    if peers:
        try:
            say(f"waiting up to {timeout:,} s for the other workers: {_named(peers)}")
            with answering(_port(cluster[task[0]][task[1]])):
                wait_for(peers, deadline, timeout)
        except KeyboardInterrupt as e:
            raise errors.Interrupted.of(e).saying(
                f"interrupted while waiting for the other workers ({_named(peers)}); nothing "
                "written") from None
    _bound_registration(cluster, max(deadline - time.monotonic(), 1.0))
    with _default_sigint():
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as e:
            missing = {name: address for name, address in peers.items()
                       if name in _named_in(str(e))} or peers
            raise ClusterError(_not_assembled(missing, timeout)) from None


def tasks(cluster):
    """{(job, index): address} of the tasks that must all be up."""
    return {(job, i): address for job in COORDINATED_JOBS for i, address in
            enumerate(cluster.get(job, []))}


def wait_for(peers, deadline, timeout, poll=0.5):
    """Returns once every peer {(job, index): "host:port"} accepts a connection; ClusterError
    naming those that did not by `deadline` (time.monotonic())."""
    missing = dict(peers)
    while True:
        missing = {name: address for name, address in missing.items() if not _answers(address)}
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(_not_assembled(missing, timeout))
        time.sleep(poll)


def _answers(address):
    try:
        with socket.create_connection(_host_port(address), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def answering(port):
    """Accepts connections on `port` (all interfaces, as TensorFlow's server will) while the
    block runs, so that peers waiting for this task see it up; closes it before TensorFlow
    binds the port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as e:
        server.close()
        raise ClusterError(f"port {port} of this task (TF_CONFIG) cannot be used: "
                           f"{e.strerror}") from None
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, stop), daemon=True,
                              name="cluster_answer")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        server.close()


def _serve(server, stop):
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except (TimeoutError, OSError):
            continue
        with conn:  # the peer closes first, so no TIME_WAIT holds this port for TensorFlow
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.recv(1)


def _bound_registration(cluster, seconds):
    """Configures TensorFlow's coordination service as the strategy would, plus a register
    barrier bounded by `seconds`. Private TensorFlow API (2.21); skipped if it moved, since
    the wait above is the bound that matters."""
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.distribute import multi_worker_util
        from tensorflow.python.eager import context
    except ImportError:
        return
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in COORDINATED_JOBS if job in cluster]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(seconds * 1000))
    context.context().coordination_service.cluster_register_with_barrier = True


@contextlib.contextmanager
def _default_sigint():
    """Ctrl-C's default action (end the process at once) while TensorFlow holds the
    interpreter; both handlers as they were afterwards (TensorFlow replaces SIGTERM's)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _not_assembled(missing, timeout):
    return (f"the cluster did not assemble within {timeout:,} s: {_named(missing)} did not "
            "answer; start every task of TF_CONFIG's cluster (and check its addresses and "
            "ports), or raise cluster_timeout")


def _named(peers):
    return ", ".join(f"{job} {index} ({address})" for (job, index), address in sorted(peers.items()))


def _named_in(text):
    return {(job, int(index)) for job, index in _TASK_NAME.findall(text)}


def _host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _port(address):
    return _host_port(address)[1]
