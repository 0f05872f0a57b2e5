// A small SCIM 2.0 server whose ids are JSON numbers (`"id": 17`, members `{"value": 17}`), as
// some real targets answer: SPEC §4 says ids may be strings or numbers. No dependencies.
//
//   node scim-fixtures/numeric-server.mjs --port 9006 --bearer-token secret
//
// Base URL http://127.0.0.1:<port>/scim/v2. Users and Groups in memory; `eq` filters on
// userName (case-insensitive), externalId and displayName; PATCH answers 204; a member added twice
// is kept twice (as SCIMMY and scim2-server do); member values sent as strings or numbers are
// stored as numbers; removal by `members[value eq "17"]` (or `eq 17`) or the legacy value array.

import http from 'node:http';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const port = Number(arg('port', '0'));
const token = arg('bearer-token', '');
const BASE = '/scim/v2';
const SCHEMA_USER = 'urn:ietf:params:scim:schemas:core:2.0:User';
const SCHEMA_GROUP = 'urn:ietf:params:scim:schemas:core:2.0:Group';
const SCHEMA_LIST = 'urn:ietf:params:scim:api:messages:2.0:ListResponse';
const SCHEMA_ERROR = 'urn:ietf:params:scim:api:messages:2.0:Error';

const users = new Map();
const groups = new Map();
let nextId = 1;

function send(res, status, body) {
  if (body === undefined) {
    res.writeHead(status);
    res.end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/scim+json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function error(res, status, detail, scimType) {
  const body = { schemas: [SCHEMA_ERROR], status: String(status), detail };
  if (scimType) body.scimType = scimType;
  send(res, status, body);
}

function parseFilter(filter) {
  const m = /^\s*([\w.]+)\s+eq\s+(?:"((?:[^"\\]|\\.)*)"|(\d+))\s*$/.exec(filter);
  if (!m) return null;
  const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
  return { attr: m[1], value };
}

function matches(resource, { attr, value }) {
  const actual = attr.split('.').reduce((v, k) => (v == null ? undefined : v[k]), resource);
  if (actual == null) return false;
  if (attr === 'userName' || attr === 'displayName') return String(actual).toLowerCase() === value.toLowerCase();
  return String(actual) === value;
}

function list(res, store, query, strip) {
  let items = [...store.values()];
  const filter = query.get('filter');
  if (filter) {
    const parsed = parseFilter(filter);
    if (!parsed) return error(res, 400, `cannot parse filter ${filter}`, 'invalidFilter');
    items = items.filter((r) => matches(r, parsed));
  }
  const count = Number(query.get('count') ?? '100');
  const shown = items.slice(0, count).map(strip);
  send(res, 200, { schemas: [SCHEMA_LIST], totalResults: items.length, startIndex: 1, itemsPerPage: shown.length, Resources: shown });
}

const asId = (v) => (typeof v === 'number' ? v : Number(v));

function memberValues(value) {
  return (Array.isArray(value) ? value : [value]).map((m) => ({ value: asId(m.value) }));
}

function patchGroup(group, ops) {
  for (const op of ops) {
    const kind = String(op.op).toLowerCase();
    const path = op.path ?? '';
    if (kind === 'add' && path === 'members') {
      group.members.push(...memberValues(op.value));
    } else if (kind === 'remove' && path === 'members') {
      const gone = new Set(memberValues(op.value ?? []).map((m) => m.value));
      group.members = group.members.filter((m) => !gone.has(m.value));
    } else if (kind === 'remove' && path.startsWith('members[')) {
      const parsed = parseFilter(path.slice('members['.length, -1));
      if (!parsed || parsed.attr !== 'value') return 'invalidPath';
      group.members = group.members.filter((m) => String(m.value) !== parsed.value);
    } else if (kind === 'replace' && path === 'displayName') {
      group.displayName = op.value;
    } else if (kind === 'replace' && path === 'members') {
      group.members = memberValues(op.value);
    } else {
      return 'invalidPath';
    }
  }
  return null;
}

function patchUser(user, ops) {
  for (const op of ops) {
    if (String(op.op).toLowerCase() !== 'replace' && String(op.op).toLowerCase() !== 'add') return 'invalidPath';
    if (op.path) {
      user[op.path] = op.value;
    } else {
      Object.assign(user, op.value);
    }
  }
  return null;
}

const server = http.createServer((req, res) => {
  let raw = '';
  req.on('data', (chunk) => {
    raw += chunk;
  });
  req.on('end', () => {
    if (req.headers.authorization !== `Bearer ${token}`) return error(res, 401, 'bad token');
    const url = new URL(req.url, 'http://localhost');
    if (!url.pathname.startsWith(BASE)) return error(res, 404, 'not found');
    const [resource, rawId] = url.pathname.slice(BASE.length + 1).split('/');
    const store = resource === 'Users' ? users : resource === 'Groups' ? groups : null;
    if (!store) return error(res, 404, 'not found');
    let body = null;
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch {
        return error(res, 400, 'body is not JSON', 'invalidSyntax');
      }
    }
    const strip = (r) => (resource === 'Groups' && url.searchParams.get('excludedAttributes') === 'members' ? { ...r, members: undefined } : r);
    if (rawId === undefined) {
      if (req.method === 'GET') return list(res, store, url.searchParams, strip);
      if (req.method !== 'POST') return error(res, 405, 'method not allowed');
      if (resource === 'Users') {
        if ([...users.values()].some((u) => u.userName.toLowerCase() === String(body.userName).toLowerCase())) {
          return error(res, 409, 'userName is taken', 'uniqueness');
        }
        const user = { ...body, schemas: [SCHEMA_USER], id: nextId++, meta: { resourceType: 'User' } };
        users.set(user.id, user);
        return send(res, 201, user);
      }
      const group = {
        schemas: [SCHEMA_GROUP],
        id: nextId++,
        displayName: body.displayName,
        externalId: body.externalId,
        members: memberValues(body.members ?? []),
        meta: { resourceType: 'Group' },
      };
      groups.set(group.id, group);
      return send(res, 201, group);
    }
    const resourceEntry = store.get(Number(rawId));
    if (!resourceEntry) return error(res, 404, `${resource}/${rawId} not found`);
    if (req.method === 'GET') return send(res, 200, strip(resourceEntry));
    if (req.method === 'DELETE') {
      store.delete(resourceEntry.id);
      if (resource === 'Users') {
        for (const g of groups.values()) g.members = g.members.filter((m) => m.value !== resourceEntry.id);
      }
      return send(res, 204);
    }
    if (req.method === 'PATCH') {
      const ops = body?.Operations ?? [];
      const problem = resource === 'Groups' ? patchGroup(resourceEntry, ops) : patchUser(resourceEntry, ops);
      if (problem) return error(res, 400, 'unsupported operation', problem);
      return send(res, 204);
    }
    return error(res, 405, 'method not allowed');
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});
