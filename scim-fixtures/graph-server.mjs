// A Microsoft Graph-shaped server for the Graph source tests. No dependencies.
//   node graph-server.mjs --port P [--tenant T] [--client-id C] [--client-secret S] [--page-size N] [--token-lifetime SECONDS]
//
// Serves, under /v1.0, what scim-bridge reads from Graph (SPEC §7), and the token endpoint:
//   POST /{tenant}/oauth2/v2.0/token            client_credentials (client_id/client_secret in the form or Basic)
//   GET  /v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleRequests?$filter=groupId eq '{id}'
//        [&$select=...][&$expand=principal($select=...)]      $filter is required, as in Graph
//   GET  /v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances?$filter=groupId eq '{id}'
//   GET  /v1.0/groups/delta?$filter=id eq '{id}'&$select=members     then the @odata.deltaLink it answered
//   GET  /v1.0/groups/{id}[?$select=...]
//   GET  /v1.0/users/{id}[?$select=...]
// Lists are paged (--page-size, default 2) with @odata.nextLink ($skiptoken); a delta query ends with an
// @odata.deltaLink ($deltatoken) that later answers only the member changes made since.
// Every /v1.0 call needs a Bearer token from the token endpoint, not expired: otherwise 401 with a Graph error.
//
// Control API (never needs a token):
//   POST   /__graph/requests     a request object (or an array); one with an id already known replaces it
//                                (a status change keeps the id, as PIM does). `principal` is not stored: it
//                                is expanded from the users.
//   POST   /__graph/instances    an assignmentScheduleInstance (or an array); DELETE /__graph/instances/{id}
//   POST   /__graph/users        a user object with `id` (or an array)
//   PUT    /__graph/groups/{id}  {"displayName","membershipRule","onPremisesSyncEnabled"}
//   PUT    /__graph/groups/{id}/members/{userId}     DELETE the same: a membership change delta reports
//   POST   /__graph/faults       {"status":429|503|500,"retryAfter":"2","count":1,"pathContains":"...","forMs":20000}
//                                answered instead of the request while armed (count -1: until cleared or forMs over);
//                                {"delayMs":4000,...} instead answers the request normally, that much later
//   DELETE /__graph/faults       disarm all
//   POST   /__graph/expire-tokens   every token issued so far answers 401 from now on
//   POST   /__graph/expire-delta    every delta and paging token issued so far answers 410 syncStateNotFound
//   POST   /__graph/after-read   {"pathContains":"...","then":{"requests":[...],"instances":[...],"members":[[groupId,userId]]}}
//                                once: right after answering the next read whose path holds pathContains,
//                                those are added (an activation landing between two reads of the bridge)
//   PUT    /__graph/expand       {"omit":["userPrincipalName"]}: expanded principals leave those fields out
//                                (as Graph does for a principal expanded as a bare directoryObject)
//   GET    /__graph/log          requests seen: [{time,method,path,status}];  DELETE /__graph/log clears it
import http from "node:http";
import crypto from "node:crypto";
import {parseArgs} from "node:util";

const {values: args} = parseArgs({options: {
    port: {type: "string", default: "0"},
    host: {type: "string", default: "127.0.0.1"},
    tenant: {type: "string", default: "contoso"},
    "client-id": {type: "string", default: "bridge"},
    "client-secret": {type: "string", default: "secret"},
    "page-size": {type: "string", default: "2"},
    "token-lifetime": {type: "string", default: "3600"},
}});
const pageSize = Math.max(1, Number(args["page-size"]));

const requests = new Map();   // id -> request (insertion order kept)
const instances = new Map();  // id -> instance
const users = new Map();      // id -> user
const groups = new Map();     // id -> {displayName, membershipRule, onPremisesSyncEnabled}
const members = new Map();    // groupId -> Set(userId)
const changes = [];           // {seq, groupId, userId, removed}
let seq = 0;
const tokens = new Map();     // token -> expiresAt (ms)
let faults = [];
let log = [];
let expandOmit = [];          // fields left out of every expanded principal
let deltaEpoch = 0;           // delta tokens of an older epoch answer 410
let afterRead = [];           // {pathContains, then}: applied once, after the next matching read

const sendJson = (res, status, value, headers = {}) => {
    const body = Buffer.from(JSON.stringify(value));
    res.writeHead(status, {"Content-Type": "application/json", "Content-Length": body.length, ...headers});
    res.end(body);
};
const graphError = (res, status, code, message, headers = {}) =>
    sendJson(res, status, {error: {code, message, innerError: {date: new Date().toISOString()}}}, headers);
const readBody = (req) => new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c)).on("end", () => resolve(Buffer.concat(chunks).toString())).on("error", reject);
});
const many = (v) => (Array.isArray(v) ? v : [v]);
const groupMembers = (id) => {
    if (!members.has(id)) members.set(id, new Set());
    return members.get(id);
};

// `$filter=groupId eq '...'` / `id eq '...'`: the one form Graph requires here.
function filterEq(params, field) {
    const filter = params.get("$filter");
    if (!filter) return null;
    const m = filter.match(new RegExp(`^\\s*${field}\\s+eq\\s+'((?:[^']|'')*)'\\s*$`));
    return m ? m[1].replace(/''/g, "'") : undefined;
}

function select(object, list) {
    if (!list) return {...object};
    const out = {};
    for (const name of list.split(",").map((s) => s.trim()).filter(Boolean)) {
        if (name in object) out[name] = object[name];
    }
    if ("id" in object) out.id = object.id;
    return out;
}

function page(res, base, items, params) {
    const skip = Number(params.get("$skiptoken") || 0);
    const value = items.slice(skip, skip + pageSize);
    const body = {"@odata.context": `${base}/$metadata`, value};
    if (skip + pageSize < items.length) {
        const next = new URL(base);
        for (const [k, v] of params) if (k !== "$skiptoken") next.searchParams.set(k, v);
        next.searchParams.set("$skiptoken", String(skip + pageSize));
        body["@odata.nextLink"] = next.toString();
        return sendJson(res, 200, body);
    }
    return sendJson(res, 200, body);
}

function authorized(req) {
    const m = (req.headers.authorization || "").match(/^Bearer (.+)$/);
    const expires = m && tokens.get(m[1]);
    return expires && expires > Date.now();
}

function takeFault(path) {
    const now = Date.now();
    faults = faults.filter((f) => f.count !== 0 && !(f.until && f.until <= now));
    const fault = faults.find((f) => !f.pathContains || path.includes(f.pathContains));
    if (fault && fault.count > 0) fault.count -= 1;
    return fault;
}

async function control(req, res, url) {
    const parts = url.pathname.split("/").filter(Boolean).slice(1).map(decodeURIComponent);
    const body = ["POST", "PUT"].includes(req.method) ? await readBody(req) : "";
    const json = body ? JSON.parse(body) : null;
    const [what, id, sub, subId] = parts;
    if (what === "requests" && req.method === "POST") {
        for (const r of many(json)) {
            const {principal, ...stored} = r;
            if (principal && stored.principalId && !users.has(stored.principalId)) users.set(stored.principalId, {id: stored.principalId, ...principal});
            requests.delete(stored.id); // a changed request moves to the end, as a newer one
            requests.set(stored.id, stored);
        }
        return sendJson(res, 201, {requests: requests.size});
    }
    if (what === "instances" && req.method === "POST") {
        for (const i of many(json)) instances.set(i.id, i);
        return sendJson(res, 201, {instances: instances.size});
    }
    if (what === "instances" && req.method === "DELETE") {
        instances.delete(id);
        return sendJson(res, 200, {instances: instances.size});
    }
    if (what === "users" && req.method === "POST") {
        for (const u of many(json)) users.set(u.id, u);
        return sendJson(res, 201, {users: users.size});
    }
    if (what === "groups" && id && !sub && req.method === "PUT") {
        groups.set(id, {id, ...json});
        return sendJson(res, 200, groups.get(id));
    }
    if (what === "groups" && sub === "members" && subId && ["PUT", "DELETE"].includes(req.method)) {
        const set = groupMembers(id);
        const removed = req.method === "DELETE";
        if (removed ? set.delete(subId) : !set.has(subId) && set.add(subId)) {
            changes.push({seq: ++seq, groupId: id, userId: subId, removed});
        }
        return sendJson(res, 200, {members: [...set]});
    }
    if (what === "faults" && req.method === "POST") {
        for (const f of many(json)) {
            faults.push({count: 1, ...f, until: f.forMs ? Date.now() + f.forMs : null});
        }
        return sendJson(res, 201, faults);
    }
    if (what === "faults" && req.method === "DELETE") {
        faults = [];
        return sendJson(res, 200, []);
    }
    if (what === "expire-tokens" && req.method === "POST") {
        for (const t of tokens.keys()) tokens.set(t, 0);
        return sendJson(res, 200, {expired: tokens.size});
    }
    if (what === "expire-delta" && req.method === "POST") {
        deltaEpoch += 1;
        return sendJson(res, 200, {epoch: deltaEpoch});
    }
    if (what === "after-read" && req.method === "POST") {
        afterRead.push(json);
        return sendJson(res, 201, {armed: afterRead.length});
    }
    if (what === "expand" && req.method === "PUT") {
        expandOmit = json.omit || [];
        return sendJson(res, 200, {omit: expandOmit});
    }
    if (what === "log" && req.method === "GET") return sendJson(res, 200, log);
    if (what === "log" && req.method === "DELETE") {
        log = [];
        return sendJson(res, 200, []);
    }
    return sendJson(res, 404, {error: `no control route ${req.method} ${url.pathname}`});
}

async function token(req, res, tenant) {
    const form = new URLSearchParams(await readBody(req));
    let id = form.get("client_id");
    let secret = form.get("client_secret");
    const basic = (req.headers.authorization || "").match(/^Basic (.+)$/);
    if (basic) [id, secret] = Buffer.from(basic[1], "base64").toString().split(":");
    if (tenant !== args.tenant) return sendJson(res, 400, {error: "invalid_request", error_description: `unknown tenant ${tenant}`});
    if (form.get("grant_type") !== "client_credentials") return sendJson(res, 400, {error: "unsupported_grant_type"});
    if (id !== args["client-id"] || secret !== args["client-secret"]) return sendJson(res, 401, {error: "invalid_client", error_description: "wrong client credentials"});
    const lifetime = Number(args["token-lifetime"]);
    const accessToken = crypto.randomBytes(24).toString("hex");
    tokens.set(accessToken, Date.now() + lifetime * 1000);
    return sendJson(res, 200, {token_type: "Bearer", expires_in: lifetime, access_token: accessToken});
}

function graph(req, res, url) {
    const base = `http://${req.headers.host}${url.pathname}`;
    const params = url.searchParams;
    const path = url.pathname.slice("/v1.0".length);
    const pim = "/identityGovernance/privilegedAccess/group/";
    if (req.method !== "GET") return graphError(res, 405, "Request_BadRequest", "only GET is served here");
    if (path === `${pim}assignmentScheduleRequests` || path === `${pim}assignmentScheduleInstances`) {
        const groupId = filterEq(params, "groupId");
        if (!groupId) return graphError(res, 400, "BadRequest", "The $filter query parameter must scope the request to a groupId or a principalId (eq).");
        const source = path.endsWith("Requests") ? requests : instances;
        let items = [...source.values()].filter((r) => r.groupId === groupId).map((r) => select(r, params.get("$select")));
        const expand = params.get("$expand");
        if (expand && path.endsWith("Requests")) {
            const m = expand.match(/^principal(?:\(\$select=([^)]*)\))?$/);
            if (!m) return graphError(res, 400, "BadRequest", `cannot expand ${expand}`);
            items = items.map((r) => {
                const request = requests.get(r.id);
                const user = users.get(request.principalId);
                if (!user) return {...r, principal: null};
                const principal = {"@odata.type": "#microsoft.graph.user", ...select(user, m[1])};
                for (const field of expandOmit) delete principal[field];
                return {...r, principal};
            });
        }
        return page(res, base, items, params);
    }
    if (path === "/groups/delta") {
        const token = params.get("$deltatoken");
        const skip = params.get("$skiptoken");
        if (token === null && skip === null) {
            const groupId = filterEq(params, "id");
            if (!groupId) return graphError(res, 400, "BadRequest", "this server answers group delta only with $filter=id eq '{id}'");
            const ids = [...groupMembers(groupId)];
            return deltaPages(res, base, groupId, ids.map((id) => ({id})), 0, seq);
        }
        const state = JSON.parse(Buffer.from(token ?? skip, "base64url").toString());
        if ((state.epoch ?? 0) < deltaEpoch) {
            return graphError(res, 410, "syncStateNotFound", "The sync state of this delta token is gone: resync required.");
        }
        if (skip !== null) return deltaPages(res, base, state.groupId, state.items, state.offset, state.upTo);
        const net = new Map();
        for (const c of changes) if (c.groupId === state.groupId && c.seq > state.upTo) net.set(c.userId, c.removed);
        const items = [...net].map(([id, removed]) => (removed ? {id, "@removed": {reason: "deleted"}} : {id}));
        return deltaPages(res, base, state.groupId, items, 0, seq);
    }
    let m = path.match(/^\/groups\/([^/]+)$/);
    if (m) {
        const group = groups.get(decodeURIComponent(m[1]));
        if (!group) return graphError(res, 404, "Request_ResourceNotFound", `Resource '${m[1]}' does not exist.`);
        return sendJson(res, 200, select(group, params.get("$select")));
    }
    m = path.match(/^\/users\/([^/]+)$/);
    if (m) {
        const user = users.get(decodeURIComponent(m[1]));
        if (!user) return graphError(res, 404, "Request_ResourceNotFound", `Resource '${m[1]}' does not exist.`);
        return sendJson(res, 200, select(user, params.get("$select")));
    }
    return graphError(res, 404, "BadRequest", `Resource not found for the segment '${path}'.`);
}

// One group object per page, its `members@delta` cut into pages of --page-size; the last page
// carries the deltaLink that resumes after change `upTo`.
function deltaPages(res, base, groupId, items, offset, upTo) {
    const chunk = items.slice(offset, offset + pageSize).map((i) => ({"@odata.type": "#microsoft.graph.user", ...i}));
    const value = [{id: groupId, "members@delta": chunk}];
    const body = {"@odata.context": `${base}/$metadata`, value};
    const link = new URL(base);
    if (offset + pageSize < items.length) {
        link.searchParams.set("$skiptoken", Buffer.from(JSON.stringify({groupId, items, offset: offset + pageSize, upTo, epoch: deltaEpoch})).toString("base64url"));
        body["@odata.nextLink"] = link.toString();
    } else {
        link.searchParams.set("$deltatoken", Buffer.from(JSON.stringify({groupId, upTo, epoch: deltaEpoch})).toString("base64url"));
        body["@odata.deltaLink"] = link.toString();
    }
    return sendJson(res, 200, body);
}

function applyAfterRead(path) {
    const i = afterRead.findIndex((a) => path.includes(a.pathContains));
    if (i < 0) return;
    const [{then}] = afterRead.splice(i, 1);
    for (const r of then.requests || []) {
        const {principal, ...stored} = r;
        requests.delete(stored.id);
        requests.set(stored.id, stored);
    }
    for (const inst of then.instances || []) instances.set(inst.id, inst);
    for (const [groupId, userId] of then.members || []) {
        const set = groupMembers(groupId);
        if (!set.has(userId)) {
            set.add(userId);
            changes.push({seq: ++seq, groupId, userId, removed: false});
        }
    }
}

const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    const entry = {time: new Date().toISOString(), method: req.method, path: decodeURIComponent(url.pathname + url.search), status: null};
    try {
        if (url.pathname.startsWith("/__graph/")) return await control(req, res, url);
        log.push(entry);
        const tokenPath = url.pathname.match(/^\/([^/]+)\/oauth2\/v2\.0\/token$/);
        if (tokenPath && req.method === "POST") return await token(req, res, tokenPath[1]);
        if (!url.pathname.startsWith("/v1.0/")) return graphError(res, 404, "NotFound", "no such path");
        const fault = takeFault(entry.path);
        if (fault?.delayMs) {
            await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
        } else if (fault) {
            const headers = fault.retryAfter !== undefined ? {"Retry-After": String(fault.retryAfter)} : {};
            const code = fault.status === 429 ? "TooManyRequests" : "ServiceUnavailable";
            return graphError(res, fault.status, code, "injected by the test", headers);
        }
        if (!authorized(req)) {
            return graphError(res, 401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.",
                {"WWW-Authenticate": "Bearer"});
        }
        graph(req, res, url);
        // The answer is written: what lands "after this read" is not in it, and is in place
        // before the server reads the bridge's next request.
        if (res.statusCode === 200) applyAfterRead(entry.path);
        return;
    } catch (e) {
        return sendJson(res, 400, {error: {code: "BadRequest", message: String(e)}});
    } finally {
        res.on("finish", () => { entry.status = res.statusCode; });
    }
});
server.listen(Number(args.port), args.host, () => console.log(`listening on ${server.address().port}`));
