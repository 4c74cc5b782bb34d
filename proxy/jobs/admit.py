"""A prepared job through gatekeeping's admission: its body masked, its reservation and priority set,
the rate-limit headers left for the response."""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from gatekeeping.admission import admit
from gatekeeping.auth import Principal
from proxy.runtime import Runtime


async def admit_job(request: Request | None, rt: Runtime, principal: Principal, job):
    assert rt.limiter is not None, "the runtime opens its limiter at start"
    admitted = await admit(rt.limiter, principal, job.memo.endpoint, job.model, job.inp.inference.body,
                           request.headers.get("x-priority") if request is not None else None)
    if request is not None:
        request.state.ratelimit_headers = dict(admitted.admission.headers)
    inference = msgspec.structs.replace(job.inp.inference, body=admitted.body)
    inp = msgspec.structs.replace(job.inp, inference=inference, admission=msgspec.to_builtins(admitted.admission),
                                  prompt_estimate=admitted.prompt_estimate, priority=admitted.priority)
    memo = msgspec.structs.replace(job.memo, pii=admitted.pii_counts) if admitted.pii_counts else job.memo
    return msgspec.structs.replace(job, inp=inp, memo=memo)
