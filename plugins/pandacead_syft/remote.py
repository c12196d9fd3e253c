"""The code a job becomes on the datasite.

syft sends the *source* of `pandacead_dp_sgd` (via inspect.getsource) and
execs it on the datasite, renamed per job, so the function must be
self-contained: a module-level `def`, every import inside it, no closures
and no annotations (they would be evaluated in syft's bare exec namespace).
It trains with the Opacus backend's own `train_arrays`, imported at run
time, so syft and opacus jobs share one DP implementation.

Two things reach the function from the host rather than through syft, via
`HOST` (pandacead's datasite runs in-process): the progress callback (epoch,
loss, ε go to the data owner's daemon, never into the spender's result) and
the job's secret noise seed (`ctx.options["noise_seed"]`), which must not be
stored in the code request, where the spender's account could read it.
Run anywhere else, the function trains without them.

It never raises: an exception inside would reach pandacead only as syft's
"please contact the Server Admin", so the function returns the real cause
and traceback instead.
"""

HOST: dict = {}  # {"progress": callable, "noise_seed": int | None}, set around an execution


def pandacead_dp_sgd(data, spec):
    import json
    import traceback

    def plain(v):
        # Only builtin types cross syft's serialiser (it has no canonical name
        # for e.g. torch's TorchVersion or numpy scalars).
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or type(v) in (bool, int, float, str, bytes):
            return v
        if isinstance(v, bytearray):
            return bytes(v)
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:  # numpy scalar
            return plain(v.item())
        for kind in (bool, int, float, str):
            if isinstance(v, kind):
                return kind(v)
        return str(v)

    # syft calls the function once on the private asset and once more on its
    # mock; the mock is a tiny shape stand-in and is never trained on.
    if data.get("kind") != "private":
        return {"ok": False, "mock": True}
    try:
        import torch

        request = json.loads(spec)
        threads = int(request["threads"])
        torch.set_num_threads(threads)
        import inspect

        from pandacead_opacus.training import train_arrays

        try:
            from pandacead_syft.remote import HOST as host
        except ImportError:
            host = {}
        options = {
            "grad_sample_mode": request["grad_sample_mode"],
            "secure_mode": request["secure_mode"],
        }
        accepted = inspect.signature(train_arrays).parameters
        if "fast_path" in accepted:
            options["fast_path"] = request.get("fast_path", "off")
        if host.get("noise_seed") is not None and "noise_seed" in accepted:
            options["noise_seed"] = host["noise_seed"]

        arrays = {k: data[k] for k in ("X_train", "y_train", "X_test", "y_test")}
        result = train_arrays(
            request["job"], request["plan"], arrays, threads, host.get("progress"), **options
        )
        return {"ok": True, "result": plain(result)}
    except Exception as exc:
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
