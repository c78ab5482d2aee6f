"""CPU cost of an API request authenticated with a provider JWT against the same request with an
API token, in one process.

    .venv/bin/python -m bench.auth.run                # from the repository root, 2-3 min
    .venv/bin/python -m bench.auth.run --requests 500 --rounds 2
    .venv/bin/python -m bench.auth.run \\
        --database-url postgres://postgres@127.0.0.1:5432/mkp_auth_bench

What runs, all in this process but the provider:
- the OpenID Connect provider of the tests (tests/support/oidc.py: oidc-provider on Node, a
  process of its own on loopback), with an account of this run;
- Django with bench/auth/settings.py: the project's settings, the provider as issuer, client
  and API audience (MARKETPLACE_OIDC_*), SQLite in a temporary folder (or --database-url,
  created if missing, never dropped), the local-memory cache, every rate limit at 100000/s so
  that the limiter is not what is measured (bench/throttle measures it); migrated, then one
  buyer with an API token, and the provider's buyer made by its first request (not measured).

What it measures, each request through Django's test Client (the whole middleware stack, DRF,
the view `GET /api/v1/me` and its serializer), `time.process_time()` around each:
1. `--rounds` of `--requests` of each after `--warmup` of each, in blocks of `--block` whose
   order turns every block (token, jwt | jwt, token | ...): `Authorization: Bearer mkp_...`
   (BearerTokenAuthentication: one lookup) and `Authorization: Bearer <provider JWT>`
   (ProviderTokenAuthentication: `marketplace.oidc.verify` with the JWKS cached, then
   `buyer_of_identity`, one lookup). CPU µs per request of each, the ratio jwt ÷ token
   (target ≤ 1.2), and the JWKS fetches meanwhile, as the provider counts them (`/stats`) and
   as `oidc.provider().jwks_fetches` does (both must stay 0);
2. the parts alone, per call, in the same alternating blocks: `oidc.verify`, the RSA
   signature check alone (cryptography, the floor of any RS256 check), `buyer_of_identity`,
   each authentication class's `authenticate`; so the report splits the JWT request into verify,
   identity lookup and the rest (the same request handling the token request has);
3. the provider rotates its key (RS256): tokens signed by the new kid (and the old one, still
   published) are sent; exactly one JWKS fetch must happen, for the new kid; then tokens
   naming a kid the provider never published: one fetch, then none (the unknown kid is
   remembered);
4. when the ratio misses the target (or with --profile), cProfile over JWT requests with
   `time.process_time` as its clock, the functions that take the most.

CPU time is this process's: a PostgreSQL server's work for the query (one per request on
either path) is not in it. Exit 1 on a wrong answer or a fetch that should not have happened;
--strict: exit 3 when the ratio misses. The figures go to bench/results/auth-*.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import logging
import os
import pstats
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ME = "/api/v1/me"
TARGET_RATIO = 1.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(REPO))


class BenchError(Exception):
    pass


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--requests", type=int, default=2000, help="requests of each kind per round")
    add("--rounds", type=int, default=4, help="rounds, the order turning each round")
    add("--warmup", type=int, default=300, help="requests of each kind before measuring")
    add("--calls", type=int, default=2000, help="calls of each part alone per round")
    add("--block", type=int, default=10, help="requests (calls) per block; the order turns")
    add("--rotation-requests", type=int, default=200, help="requests after the key rotation")
    add("--database-url", default="", help="PostgreSQL URL (created if missing); else SQLite")
    add("--profile", action="store_true", help="profile JWT requests even when the ratio passes")
    add("--profile-requests", type=int, default=2000)
    add("--no-save", action="store_true", help="do not write bench/results/auth-*.json")
    add("--strict", action="store_true", help="exit 3 when the ratio misses the target")
    return parser.parse_args()


# --- Set-up ------------------------------------------------------------------------------------


def configure(args: argparse.Namespace, provider: Any, data_dir: str) -> None:
    """The environment the settings are read from, before Django starts. An inherited
    MARKETPLACE_* variable would change what is measured: the bench drops them all."""
    for name in list(os.environ):
        if name.startswith("MARKETPLACE_") or name == "DJANGO_SETTINGS_MODULE":
            del os.environ[name]
    os.environ.update(
        DJANGO_SETTINGS_MODULE="bench.auth.settings",
        MARKETPLACE_SERVICE_ENV="dev",
        MARKETPLACE_DATA_DIR=data_dir,
        MARKETPLACE_OIDC_ISSUER=provider.issuer,
        MARKETPLACE_OIDC_CLIENT_ID=provider.client_id,
        MARKETPLACE_OIDC_CLIENT_SECRET=provider.client_secret,
        MARKETPLACE_OIDC_API_AUDIENCE=provider.api_audience,
        # Never reached: the bench measures authentication, not the limits (bench/throttle).
        MARKETPLACE_THROTTLE_ANON="100000/s",
        MARKETPLACE_THROTTLE_USER="100000/s",
        MARKETPLACE_THROTTLE_AUTH_FAILURE="100000/s",
        MARKETPLACE_LOG_LEVEL="ERROR",
    )
    if args.database_url:
        os.environ["MARKETPLACE_DATABASE_URL"] = args.database_url


def database_create_if_missing(url: str) -> None:
    import psycopg
    from psycopg import sql

    base, _, name = url.rstrip("/").rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def machine_busy() -> float:
    """CPU seconds the whole machine has used (every core), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# --- Measuring ---------------------------------------------------------------------------------


def requests_timed(client: Any, header: str, n: int, expect: str) -> list[float]:
    """CPU seconds of each of n `GET /api/v1/me` with this Authorization header."""
    clock = time.process_time
    samples = [0.0] * n
    for i in range(n):
        started = clock()
        response = client.get(ME, HTTP_AUTHORIZATION=header)
        samples[i] = clock() - started
        if response.status_code != 200:
            raise BenchError(f"GET {ME} answered {response.status_code}: {response.content!r}")
    if response.json()["id"] != expect:
        raise BenchError(f"GET {ME} answered for {response.json()['id']}, not {expect}")
    return samples


def calls_timed(call: Callable[[], Any], n: int) -> list[float]:
    clock = time.process_time
    samples = [0.0] * n
    for i in range(n):
        started = clock()
        call()
        samples[i] = clock() - started
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    """µs: mean, median, p95, over every sample."""
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "mean_us": statistics.fmean(ordered) * 1e6,
        "median_us": ordered[len(ordered) // 2] * 1e6,
        "p95_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e6,
    }


def interleaved(
    targets: dict[str, Callable[[int], list[float]]], rounds: int, n: int, block: int
) -> tuple[dict[str, list[float]], list[dict[str, float]], list[dict[str, float]]]:
    """Runs n of each target per round, in blocks of `block` whose order turns every block
    (A B | B A | A B ...), so that drift on the machine (other jobs starting and stopping)
    weighs on each alike. Returns every sample of each target, each round's mean (µs) and each
    block's (the targets' blocks of one index ran next to each other)."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    per_round, per_block = [], []
    names = list(targets)
    for round_no in range(rounds):
        gc.collect()
        got: dict[str, list[float]] = {name: [] for name in targets}
        for block_no, start in enumerate(range(0, n, block)):
            order = names if (round_no + block_no) % 2 == 0 else names[::-1]
            means = {}
            for name in order:
                values = targets[name](min(block, n - start))
                got[name].extend(values)
                means[name] = statistics.fmean(values) * 1e6
            per_block.append(means)
        for name, values in got.items():
            samples[name].extend(values)
        per_round.append({name: statistics.fmean(values) * 1e6 for name, values in got.items()})
    return samples, per_round, per_block


def signature_check(token: str, key: Any) -> Callable[[], None]:
    """The RS256 check alone, as cryptography does it for PyJWT: the floor of any verify."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input, _, signature_b64 = token.rpartition(".")
    signature = base64.urlsafe_b64decode(signature_b64 + "=" * (-len(signature_b64) % 4))
    message = signing_input.encode()
    public_key = key.key

    def check() -> None:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    return check


def profile_paths(client: Any, headers: dict[str, str], n: int, block: int) -> dict[str, Any]:
    """cProfile (timed by process_time) over n requests of each path, in alternating blocks:
    the time per request under each part of the JWT path, and the functions whose own time
    differs most between the two paths (jwt - token), which is where the JWT's extra cost goes.
    The profiler weighs many small Python calls (PyJWT's per-character checks) far more than
    they weigh unprofiled: read its shares, and the measured figures for the costs."""
    profilers = {name: cProfile.Profile(time.process_time) for name in headers}
    for block_no, _ in enumerate(range(0, n, block)):
        order = list(headers) if block_no % 2 == 0 else list(headers)[::-1]
        for name in order:
            profilers[name].enable()
            for _ in range(block):
                client.get(ME, HTTP_AUTHORIZATION=headers[name])
            profilers[name].disable()
    requests = len(range(0, n, block)) * block
    stats = {name: pstats.Stats(profiler) for name, profiler in profilers.items()}
    parts = {
        "ProviderTokenAuthentication": ("accounts/api/authentication.py", "authenticate"),
        "  oidc.verify": ("marketplace/oidc.py", "verify"),
        "    jwt.get_unverified_header": ("jwt/api_jws.py", "get_unverified_header"),
        "    jwt.decode (with the signature)": ("jwt/api_jwt.py", "decode"),
        "      RSAAlgorithm.verify": ("jwt/algorithms.py", "verify"),
        "  buyer_of_identity": ("accounts/services.py", "buyer_of_identity"),
    }  # fmt: skip
    cumulative: dict[str, float] = dict.fromkeys(parts, 0.0)
    for (filename, _line, function), row in stats["jwt"].stats.items():
        for label, (file_end, name) in parts.items():
            if filename.endswith(file_end) and function == name:
                cumulative[label] += row[3] / requests * 1e6
    own: dict[str, dict[tuple, float]] = {
        name: {key: row[2] / requests * 1e6 for key, row in st.stats.items()}
        for name, st in stats.items()
    }
    keys = set(own["jwt"]) | set(own["token"])
    differences = sorted(
        ((own["jwt"].get(k, 0.0) - own["token"].get(k, 0.0), k) for k in keys), reverse=True
    )

    def where(key: tuple) -> str:
        filename, line, function = key
        short = filename.split("site-packages/")[-1].removeprefix(str(REPO) + "/")
        return f"{short}:{line}({function})"

    return {
        "requests": requests,
        "us_per_request": {name: st.total_tt / requests * 1e6 for name, st in stats.items()},
        "jwt_parts_us_per_request": cumulative,
        "own_time_more_in_jwt_us": [(where(k), d) for d, k in differences[:12]],
        "own_time_less_in_jwt_us": [(where(k), d) for d, k in differences[-5:]],
    }


# --- The run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, provider: Any) -> dict[str, Any]:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client, RequestFactory

    from accounts.api.authentication import ProviderTokenAuthentication
    from accounts.models import Identity
    from accounts.services import api_token_issue, buyer_of_identity
    from marketplace import oidc
    from marketplace.actors import Actor
    from marketplace.api.authentication import BearerTokenAuthentication

    database = settings.DATABASES["default"]
    print(f"database {database['ENGINE'].rsplit('.', 1)[-1]} {database['NAME']}: migrating",
          flush=True)  # fmt: skip
    call_command("migrate", interactive=False, verbosity=0)

    run_id = secrets.token_hex(4)
    account = f"bench-auth-{run_id}"
    provider.set_account(
        account,
        claims={"email": f"{account}-jwt@example.com", "email_verified": True, "groups": []},
        amr=["pwd"],
    )
    api_token, token = api_token_issue(
        email=f"{account}-token@example.com", actor=Actor.system("bench-auth")
    )
    jwt_token = provider.access_token(account)
    token_header, jwt_header = f"Bearer {token}", f"Bearer {jwt_token}"
    client = Client()

    # The provider's buyer is made by its first request (and the JWKS fetched): not measured.
    first = client.get(ME, HTTP_AUTHORIZATION=jwt_header)
    if first.status_code != 200:
        raise BenchError(f"the first JWT request answered {first.status_code}: {first.content!r}")
    import jwt as pyjwt

    claims = pyjwt.decode(jwt_token, options={"verify_signature": False})
    identity = Identity.objects.select_related("user").get(
        issuer=settings.OIDC_ISSUER, subject=claims["sub"]
    )
    jwt_user, token_user = str(identity.user.uuid), str(api_token.user.uuid)
    kid = pyjwt.get_unverified_header(jwt_token)["kid"]
    print(f"provider {provider.issuer}, key {kid}; buyers: token {token_user}, "
          f"JWT {jwt_user} (made by its first request)", flush=True)  # fmt: skip

    requests_timed(client, token_header, args.warmup, token_user)
    requests_timed(client, jwt_header, args.warmup, jwt_user)

    ours_before = oidc.provider().jwks_fetches
    theirs_before = provider.stats()["jwks_fetches"]
    load_before = os.getloadavg()
    busy_before, own_before, wall_before = machine_busy(), time.process_time(), time.monotonic()
    print(f"measuring: {args.rounds} rounds of {args.requests} requests each ...", flush=True)
    samples, per_round, per_block = interleaved(
        {
            "token": lambda n: requests_timed(client, token_header, n, token_user),
            "jwt": lambda n: requests_timed(client, jwt_header, n, jwt_user),
        },
        args.rounds,
        args.requests,
        args.block,
    )
    wall = time.monotonic() - wall_before
    machine = (machine_busy() - busy_before) / wall
    own = (time.process_time() - own_before) / wall
    requests_fetches = {
        "ours": oidc.provider().jwks_fetches - ours_before,
        "provider": provider.stats()["jwks_fetches"] - theirs_before,
    }

    # The parts alone.
    key = oidc.provider().key(kid)
    assert key is not None
    provider_auth, bearer_auth = ProviderTokenAuthentication(), BearerTokenAuthentication()
    jwt_request = RequestFactory().get(ME, HTTP_AUTHORIZATION=jwt_header)
    token_request = RequestFactory().get(ME, HTTP_AUTHORIZATION=token_header)
    audience, issuer = settings.OIDC_API_AUDIENCE, settings.OIDC_ISSUER
    email = claims.get("email") if claims.get("email_verified") is True else None
    print(f"the parts alone: {args.rounds} rounds of {args.calls} calls each ...", flush=True)
    ours_before = oidc.provider().jwks_fetches
    theirs_before = provider.stats()["jwks_fetches"]
    part_samples, part_rounds, _ = interleaved(
        {
            "jwt_authenticate": lambda n: calls_timed(
                lambda: provider_auth.authenticate(jwt_request), n
            ),
            "verify": lambda n: calls_timed(lambda: oidc.verify(jwt_token, audience=audience), n),
            "rsa_signature": lambda n: calls_timed(signature_check(jwt_token, key), n),
            "buyer_of_identity": lambda n: calls_timed(
                lambda: buyer_of_identity(issuer=issuer, subject=claims["sub"], email=email), n
            ),
            "token_authenticate": lambda n: calls_timed(
                lambda: (
                    provider_auth.authenticate(token_request),
                    bearer_auth.authenticate(token_request),
                ),
                n,
            ),
        },
        args.rounds,
        args.calls,
        args.block,
    )
    parts_fetches = {
        "ours": oidc.provider().jwks_fetches - ours_before,
        "provider": provider.stats()["jwks_fetches"] - theirs_before,
    }

    # Rotation: the new kid is fetched once, the old one stays served from the same fetch.
    ours_before = oidc.provider().jwks_fetches
    theirs_before = provider.stats()["jwks_fetches"]
    new_kid = provider.rotate("RS256")
    rotated = [provider.access_token(account) for _ in range(3)]
    kids = {pyjwt.get_unverified_header(t)["kid"] for t in rotated}
    if kids != {new_kid}:
        raise BenchError(f"tokens after the rotation name {kids}, not {new_kid}")
    started = time.monotonic()
    requests_timed(client, f"Bearer {rotated[0]}", 1, jwt_user)
    first_after_rotation_ms = (time.monotonic() - started) * 1e3
    for i in range(args.rotation_requests):
        header = f"Bearer {rotated[i % 3]}" if i % 2 else jwt_header  # new and old kid
        requests_timed(client, header, 1, jwt_user)
    rotation = {
        "old_kid": kid,
        "new_kid": new_kid,
        "requests": args.rotation_requests + 1,
        "first_request_wall_ms": first_after_rotation_ms,
        "jwks_fetches": {
            "ours": oidc.provider().jwks_fetches - ours_before,
            "provider": provider.stats()["jwks_fetches"] - theirs_before,
        },
        "new_kid_cached": new_kid in oidc.provider()._keys,
    }

    # A kid the provider never published: fetched for once, then remembered as unknown.
    ours_before = oidc.provider().jwks_fetches
    theirs_before = provider.stats()["jwks_fetches"]
    forged_kid = f"bench-auth-unknown-{run_id}"
    now = int(time.time())
    forged = provider.sign(
        {"iss": issuer, "aud": audience, "sub": claims["sub"], "iat": now, "exp": now + 600},
        {"alg": "RS256", "kid": forged_kid, "typ": "at+jwt"},
    )
    request_log = logging.getLogger("django.request")
    level, request_log.level = request_log.level, logging.ERROR  # the 401s are expected
    try:
        statuses = {
            client.get(ME, HTTP_AUTHORIZATION=f"Bearer {forged}").status_code for _ in range(20)
        }
    finally:
        request_log.setLevel(level)
    if statuses != {401}:
        raise BenchError(f"a token of an unknown kid answered {statuses}, not 401")
    unknown = {
        "kid": forged_kid,
        "requests": 20,
        "jwks_fetches": {
            "ours": oidc.provider().jwks_fetches - ours_before,
            "provider": provider.stats()["jwks_fetches"] - theirs_before,
        },
    }

    token_s, jwt_s = summary(samples["token"]), summary(samples["jwt"])
    parts = {name: summary(got) for name, got in part_samples.items()}
    result: dict[str, Any] = {
        "requests": {"token": token_s, "jwt": jwt_s},
        "ratio_mean": jwt_s["mean_us"] / token_s["mean_us"],
        "ratio_median": jwt_s["median_us"] / token_s["median_us"],
        "ratio_per_round": [r["jwt"] / r["token"] for r in per_round],
        # Each jwt block over the token block next to it: a block that other jobs disturbed
        # moves its one ratio, not the median.
        "ratio_paired_blocks_median": statistics.median(b["jwt"] / b["token"] for b in per_block),
        "rounds_us": per_round,
        "measured_jwks_fetches": requests_fetches,
        "parts": parts,
        "parts_rounds_us": part_rounds,
        "parts_jwks_fetches": parts_fetches,
        "rotation": rotation,
        "unknown_kid": unknown,
        "machine": {
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "busy_cores": machine,
            "this_process_cores": own,
            "others_cores": machine - own,
            "cores": os.cpu_count(),
        },
        "database": database["ENGINE"].rsplit(".", 1)[-1],
    }
    if args.profile or result["ratio_mean"] > TARGET_RATIO:
        print(f"profiling {args.profile_requests} requests of each ...", flush=True)
        result["profile"] = profile_paths(
            client, {"token": token_header, "jwt": jwt_header}, args.profile_requests, args.block
        )
    return result


def print_report(args: argparse.Namespace, r: dict[str, Any]) -> bool:
    token, jwt_ = r["requests"]["token"], r["requests"]["jwt"]
    print(f"\nGET {ME} through the test Client, CPU µs per request ({r['database']}, "
          f"{args.rounds} rounds x {args.requests} each):")  # fmt: skip
    print(f"{'':8} {'mean':>8} {'median':>8} {'p95':>8}")
    for name, s in (("token", token), ("jwt", jwt_)):
        print(f"{name:8} {s['mean_us']:8.1f} {s['median_us']:8.1f} {s['p95_us']:8.1f}")
    rounds = ", ".join(f"{x:.3f}" for x in r["ratio_per_round"])
    print(f"ratio jwt ÷ token: {r['ratio_mean']:.3f} (of the means; of the medians "
          f"{r['ratio_median']:.3f}; median of the {args.block}-request blocks side by side "
          f"{r['ratio_paired_blocks_median']:.3f}; rounds {rounds})")  # fmt: skip
    f = r["measured_jwks_fetches"]
    print(f"JWKS fetches while measuring: provider {f['provider']}, ours {f['ours']}")

    p = {name: s["mean_us"] for name, s in r["parts"].items()}
    print("\nthe parts alone, CPU µs per call (mean):")
    for name, label in (
        ("jwt_authenticate", "ProviderTokenAuthentication.authenticate (JWT)"),
        ("verify", "  oidc.verify"),
        ("rsa_signature", "    of which the RSA-2048 signature check (cryptography)"),
        ("buyer_of_identity", "  buyer_of_identity (one lookup)"),
        ("token_authenticate", "both classes' authenticate (API token: one lookup)"),
    ):
        print(f"  {label:58} {p[name]:8.1f}")
    rest_jwt = jwt_["mean_us"] - p["jwt_authenticate"]
    rest_token = token["mean_us"] - p["token_authenticate"]
    difference = jwt_["mean_us"] - token["mean_us"]
    print(
        f"JWT request {jwt_['mean_us']:.0f} µs = verify {p['verify']:.0f} "
        f"({p['verify'] / jwt_['mean_us']:.0%}; its signature check {p['rsa_signature']:.0f}) + "
        f"identity lookup {p['buyer_of_identity']:.0f} "
        f"({p['buyer_of_identity'] / jwt_['mean_us']:.0%}) + the rest of the request "
        f"{rest_jwt:.0f}\ntoken request {token['mean_us']:.0f} µs = token lookup "
        f"{p['token_authenticate']:.0f} + the rest {rest_token:.0f}; the JWT costs "
        f"{difference:+.0f} µs per request ({p['jwt_authenticate'] - p['token_authenticate']:+.0f}"
        " from the parts alone)"
    )

    rot = r["rotation"]
    print(
        f"\nkey rotation: new kid {rot['new_kid']} (old {rot['old_kid']}); "
        f"{rot['requests']} requests, new and old kid: JWKS fetches provider "
        f"{rot['jwks_fetches']['provider']}, ours {rot['jwks_fetches']['ours']}; the first "
        f"request with the new kid took {rot['first_request_wall_ms']:.1f} ms of wall time"
    )
    unk = r["unknown_kid"]
    print(
        f"unknown kid {unk['kid']}: {unk['requests']} requests, all 401; JWKS fetches provider "
        f"{unk['jwks_fetches']['provider']}, ours {unk['jwks_fetches']['ours']}"
    )
    m = r["machine"]
    print(
        f"\nmachine while measuring: {m['busy_cores']:.2f} of {m['cores']} cores busy, this "
        f"process {m['this_process_cores']:.2f}, others {m['others_cores']:.2f}; load average "
        f"{m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after"
    )
    if "profile" in r:
        prof = r["profile"]
        per = prof["us_per_request"]
        print(
            f"\nprofile, {prof['requests']} requests of each (cProfile timed by process_time, "
            f"which weighs small Python calls far more than they weigh): token {per['token']:.0f}"
            f" µs, jwt {per['jwt']:.0f} µs per request under the profiler; in the JWT request:"
        )
        for label, us in prof["jwt_parts_us_per_request"].items():
            print(f"  {label:44} {us:8.1f} µs ({us / per['jwt']:.0%})")
        print("own time per request, jwt - token (µs), most more:")
        for where, us in prof["own_time_more_in_jwt_us"]:
            print(f"  {us:+8.1f}  {where}")
        print("most less:")
        for where, us in prof["own_time_less_in_jwt_us"]:
            print(f"  {us:+8.1f}  {where}")

    checks = {
        f"ratio jwt ÷ token ≤ {TARGET_RATIO}": r["ratio_mean"] <= TARGET_RATIO,
        "no JWKS fetch while measuring": f == {"ours": 0, "provider": 0}
        and r["parts_jwks_fetches"] == {"ours": 0, "provider": 0},
        "one JWKS fetch for the new kid": rot["jwks_fetches"] == {"ours": 1, "provider": 1}
        and rot["new_kid_cached"],
        "one JWKS fetch for an unknown kid": unk["jwks_fetches"] == {"ours": 1, "provider": 1},
    }
    print()
    for name, ok in checks.items():
        print(f"{name}: {'PASS' if ok else 'FAIL'}")
    r["checks"] = checks
    return all(ok for name, ok in checks.items() if not name.startswith("ratio"))


def main() -> int:
    args = parse_args()
    from tests.support.oidc import OIDCProvider, default_config, skip_reason

    reason = skip_reason()
    if reason:
        raise BenchError(reason)
    if args.database_url:
        database_create_if_missing(args.database_url)
    started = time.monotonic()
    provider = OIDCProvider().start(default_config())
    try:
        with tempfile.TemporaryDirectory(prefix="bench-auth-") as data_dir:
            configure(args, provider, data_dir)
            result = run(args, provider)
            from django.db import connections

            connections.close_all()
    finally:
        provider.stop()
    fetches_ok = print_report(args, result)
    result.update(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        options=vars(args),
        seconds=time.monotonic() - started,
    )
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        saved = RESULTS_DIR / f"auth-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        saved.write_text(json.dumps(result, indent=2, default=str))
        print(f"run took {result['seconds']:.0f} s; saved {saved.relative_to(REPO)}")
    if not fetches_ok:
        return 1
    return 3 if args.strict and result["ratio_mean"] > TARGET_RATIO else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
