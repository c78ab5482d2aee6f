// A real OpenID Connect provider for the test suite: the certified `oidc-provider` package behind
// a plain node:http server on loopback, with its own login page and a test control API under
// /__test__/. Started by tests/support/oidc.py as
//
//   node provider.mjs --config FILE [--exit-with-stdin]
//
// and prints `listening <issuer>` on stdout once it answers; everything else goes to stderr.
// With --exit-with-stdin it exits when its stdin closes, so a test run killed with SIGKILL
// leaves no provider behind.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    config: { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});
if (!args.config) {
  console.error('usage: node provider.mjs --config FILE [--exit-with-stdin]');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(args.config, 'utf8'));
const apiAudience = config.api_audience;
const controlToken = Buffer.from(config.control_token);

const accounts = new Map(Object.entries(config.accounts || {}));
const clients = new Map((config.clients || []).map((client) => [client.client_id, client]));
const stats = { jwks_fetches: 0, token_requests: 0 };

// Fixed for the life of the process, so the cookies of a session survive a rebuilt Provider.
const cookieKeys = [crypto.randomBytes(32).toString('hex')];

// Newest first: oidc-provider signs with the first key of the wanted alg (keys of equal score
// keep their order), so a rotated-in key signs new tokens at once.
let keys = [];

function generateKey(alg) {
  const pair = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
  const jwk = { ...pair.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
  return { alg, kid, jwk, privateKey: pair.privateKey, publicKey: pair.publicKey };
}

function currentKey(alg) {
  const key = keys.find((candidate) => candidate.alg === alg);
  if (!key) throw new HttpError(400, `no ${alg} key`);
  return key;
}

for (const alg of config.signing_algs || ['RS256', 'ES256']) {
  keys.push(generateKey(alg));
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Same shape as oidc-provider's own (unexported) ResourceServer, for tokens minted by the
// control API.
class ResourceServer {
  constructor(identifier, data) {
    this.identifierValue = identifier;
    Object.assign(this, data);
  }

  get scopes() {
    return new Set(this.scope && this.scope.split(' '));
  }

  identifier() {
    return this.identifierValue;
  }
}

function resourceServerInfo(audience = apiAudience) {
  return {
    scope: 'openid email',
    audience,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

function findAccount(ctx, sub) {
  const account = accounts.get(sub);
  // A disabled account is gone as far as the provider knows: a session that names it no
  // longer counts as a login (see accountGone below).
  if (!account || account.disabled) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { ...account.claims, sub };
    },
  };
}

// Without this check a session whose account has gone would go on to consent and fail with a
// server error; with it, prompt=none answers login_required, as a real IdP does.
function interactionPolicyWithAccountCheck() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check(
    'account_gone',
    'the End-User of the session is no longer available',
    'login_required',
    (ctx) => Boolean(ctx.oidc.session.accountId && !ctx.oidc.account),
  ));
  return policy;
}

function clientMetadata(client) {
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    ...client,
  };
}

// Renders the form oidc-provider hands over and submits it at once with logout=yes, so
// RP-initiated logout needs no click (the provider's own no-session path does the same).
async function logoutSource(ctx, form) {
  ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Signing out</title></head>
<body>
${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>')}
<noscript><button type="submit" form="op.logoutForm">Sign out</button></noscript>
<script>document.getElementById('op.logoutForm').submit();</script>
</body></html>`;
}

let provider;
let providerCallback;
let issuer;

// oidc-provider reads `jwks` and `clients` only when a Provider is constructed, and has no
// public way to change them later. Rotation and new clients therefore build a new Provider over
// the same issuer. Nothing is lost: the in-memory adapter keeps its store at module level
// (sessions, grants, interactions, codes and tokens are shared by every Provider in the
// process) and the cookie keys are fixed above, so a signed-in browser stays signed in.
function buildProvider() {
  const built = new Provider(issuer, {
    clients: [...clients.values()].map(clientMetadata),
    jwks: { keys: keys.map((key) => key.jwk) },
    findAccount,
    claims: {
      // acr and amr under openid, not standalone: a standalone acr is dropped unless every
      // value is listed in acrValues, and accounts may carry any.
      openid: ['sub', 'acr', 'amr'],
      sid: null,
      auth_time: null,
      iss: null,
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'locale'],
      groups: ['groups', 'partner'],
    },
    // The ID token carries the released claims, not only sub, so a relying party need not
    // call userinfo.
    conformIdTokenClaims: false,
    pkce: { methods: ['S256'], required: () => true },
    cookies: {
      keys: cookieKeys,
      // SameSite=None without Secure is refused by Chromium on plain http.
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
      policy: interactionPolicyWithAccountCheck(),
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true, logoutSource },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf[0] : apiAudience),
        // The code flow's access token is for the API even though the scope has openid.
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (resourceIndicator !== apiAudience) throw new errors.InvalidTarget();
          return resourceServerInfo();
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || 3600,
      ClientCredentials: 600,
      Grant: 14 * 24 * 3600,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      RefreshToken: 24 * 3600,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Error</title></head><body>
<h1>${escapeHtml(out.error)}</h1><p>${escapeHtml(out.error_description || '')}</p></body></html>`;
    },
  });
  built.on('server_error', (ctx, error) => console.error('server_error', error));
  built.on('grant.error', (ctx, error) => console.error('grant.error', error.message));
  provider = built;
  providerCallback = built.callback();
}

function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function loginPage(uid, { login = '', error } = {}) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
<label>Login <input name="login" value="${escapeHtml(login)}" required autofocus></label>
<label>Password <input type="password" name="password" required></label>
<button type="submit">Sign in</button>
</form>
</body></html>`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(req) {
  const text = await readBody(req);
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError(400, 'body is not JSON');
  }
}

function send(res, status, body, type = 'application/json') {
  const text = type === 'application/json' ? JSON.stringify(body) : body;
  res.writeHead(status, {
    'Content-Type': `${type}; charset=utf-8`,
    'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

// The consent prompt is granted as asked: these are first-party test clients.
async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session: { accountId } } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const consent = details.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(url.pathname);
  if (!match) throw new HttpError(404, 'not found');
  const [, uid, login] = match;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new HttpError(400, 'interaction does not match its cookie');

  if (!login && req.method === 'GET') {
    if (details.prompt.name === 'consent') {
      await grantConsent(req, res, details);
      return;
    }
    send(res, 200, loginPage(uid, { login: details.params.login_hint || '' }), 'text/html');
    return;
  }
  if (!login || req.method !== 'POST') throw new HttpError(405, 'method not allowed');

  const form = new URLSearchParams(await readBody(req));
  const accountId = form.get('login') || '';
  const account = accounts.get(accountId);
  const given = Buffer.from(form.get('password') || '');
  const expected = Buffer.from(account?.password ?? '');
  const passwordOk = account && given.length === expected.length
    && crypto.timingSafeEqual(given, expected);
  if (!passwordOk || account.disabled) {
    const error = passwordOk ? 'This account is disabled.' : 'Wrong login or password.';
    send(res, 401, loginPage(uid, { login: accountId, error }), 'text/html');
    return;
  }
  const result = { login: { accountId, amr: account.amr || ['pwd'] } };
  if (account.acr) result.login.acr = account.acr;
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

function base64url(value) {
  return Buffer.from(value).toString('base64url');
}

function signJwt(header, payload, key) {
  let fullHeader;
  let sign;
  if (key === 'hs256-with-public') {
    // The alg-confusion attack: HMAC keyed with the RSA public key's PEM, which a verifier that
    // trusts the token's alg with the "RSA key" would accept.
    const rsa = currentKey('RS256');
    const secret = rsa.publicKey.export({ type: 'spki', format: 'pem' });
    fullHeader = { alg: 'HS256', typ: 'JWT', kid: rsa.kid, ...header };
    sign = (input) => crypto.createHmac('sha256', secret).update(input).digest();
  } else if (key === 'current') {
    const alg = header.alg || 'RS256';
    if (alg !== 'RS256' && alg !== 'ES256') throw new HttpError(400, `cannot sign ${alg}`);
    const current = currentKey(alg);
    fullHeader = { typ: 'JWT', kid: current.kid, ...header, alg };
    sign = (input) => crypto.sign('sha256', Buffer.from(input), {
      key: current.privateKey,
      ...(alg === 'ES256' ? { dsaEncoding: 'ieee-p1363' } : {}),
    });
  } else {
    throw new HttpError(400, `unknown key ${key}`);
  }
  const input = `${base64url(JSON.stringify(fullHeader))}.${base64url(JSON.stringify(payload))}`;
  return `${input}.${base64url(sign(input))}`;
}

async function control(req, res, url) {
  const given = Buffer.from(req.headers.authorization || '');
  const expected = Buffer.from(`Bearer ${controlToken}`);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) {
    throw new HttpError(401, 'the control API needs the control token');
  }
  const route = `${req.method} ${url.pathname.replace(/^\/__test__/, '')}`;
  let match;

  if ((match = /^PUT \/accounts\/([^/]+)$/.exec(route))) {
    const body = await readJson(req);
    const id = decodeURIComponent(match[1]);
    accounts.set(id, {
      password: body.password,
      claims: body.claims || {},
      amr: body.amr || ['pwd'],
      acr: body.acr ?? undefined,
      disabled: Boolean(body.disabled),
    });
    return send(res, 200, { account: id });
  }

  if ((match = /^PUT \/clients\/([^/]+)$/.exec(route))) {
    const body = await readJson(req);
    const id = decodeURIComponent(match[1]);
    clients.set(id, { ...body, client_id: id });
    buildProvider();
    return send(res, 200, { client_id: id });
  }

  if (route === 'POST /rotate') {
    const { alg = 'RS256', drop_old: dropOld = false } = await readJson(req);
    if (alg !== 'RS256' && alg !== 'ES256') throw new HttpError(400, `cannot generate ${alg}`);
    const key = generateKey(alg);
    keys = [key, ...keys.filter((old) => !dropOld || old.alg !== alg)];
    buildProvider();
    return send(res, 200, { kid: key.kid });
  }

  if (route === 'POST /sign') {
    const { header = {}, payload = {}, key = 'current' } = await readJson(req);
    return send(res, 200, { token: signJwt(header, payload, key) });
  }

  if (route === 'POST /access-token') {
    const body = await readJson(req);
    if (!findAccount(undefined, body.account)) throw new HttpError(404, `no account ${body.account}`);
    const client = await provider.Client.find(body.client_id || [...clients.keys()][0]);
    if (!client) throw new HttpError(404, 'no such client');
    const token = new provider.AccessToken({
      accountId: body.account,
      client,
      gty: 'authorization_code',
      scope: body.scope ?? 'openid email',
      resourceServer: new ResourceServer(apiAudience, resourceServerInfo(body.audience || apiAudience)),
      ...(body.expires_in ? { expiresIn: body.expires_in } : {}),
    });
    return send(res, 200, { access_token: await token.save() });
  }

  if (route === 'GET /stats') return send(res, 200, stats);

  throw new HttpError(404, `no control route ${route}`);
}

async function handle(req, res) {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname.startsWith('/__test__/')) {
      await control(req, res, url);
      return;
    }
    if (url.pathname.startsWith('/interaction/')) {
      await interaction(req, res, url);
      return;
    }
  } catch (error) {
    const status = error.status || error.statusCode || 500;
    if (status >= 500) console.error(error);
    if (!res.headersSent) send(res, status, { error: error.error || 'error', message: error.message });
    return;
  }
  if (req.method === 'GET' && url.pathname === '/jwks') stats.jwks_fetches += 1;
  if (req.method === 'POST' && url.pathname === '/token') stats.token_requests += 1;
  providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((error) => {
    console.error(error);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
  });
});

function shutdown() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (args['exit-with-stdin']) {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.resume();
}

server.listen(config.port || 0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  buildProvider();
  process.stdout.write(`listening ${issuer}\n`);
});
