// Reverse proxy that injects faults on demand. No dependencies.
//   node fault-proxy.mjs --port P --target http://127.0.0.1:Q
//
// Every request is forwarded to the target (method, path, query, headers, body) and its answer relayed,
// except requests hit by an armed fault. Control API on the same port (never forwarded):
//   POST   /__faults       arm a fault (or an array of them); answers 201 with what is armed
//            {"mode":"status","status":429,"retryAfter":"2","count":3,"body":{...},"headers":{...},"when":"before"|"after"}
//                answer that status (Retry-After header if given); body defaults to a SCIM error; a string
//                body is sent as text/plain. before (default): instead of forwarding (the target never
//                sees the request); after: forward first (the target applies it), then answer that status
//                instead of the target's answer
//            {"mode":"delay","ms":35000,"count":1,"when":"before"|"after"}
//                before (default): hold the request, then forward it (not forwarded if the client gave up);
//                after: forward at once, hold the answer (the target has applied it)
//            {"mode":"drop","count":1,"when":"before"|"after"}
//                close the connection without an answer; after: forward first, then drop the answer
//            "count": how many matching requests it hits (default 1; -1 = until cleared)
//            "match": {"method":"PATCH","pathContains":"/Groups","bodyContains":"remove"} (all optional;
//                pathContains is looked for in the percent-decoded path and query)
//          Faults are tried in the order armed; the first one that matches and has count left applies.
//   GET    /__faults       armed faults
//   DELETE /__faults       disarm all
//   GET    /__faults/log   requests seen: [{time,method,path,status,faulted,mode,body,traceparent,tracestate,baggage}]
//                          (status null: no answer; the trace headers only when the request had them)
//   DELETE /__faults/log   clear the log
import http from "node:http";
import {parseArgs} from "node:util";

const {values: args} = parseArgs({options: {
    port: {type: "string", default: "0"},
    host: {type: "string", default: "127.0.0.1"},
    target: {type: "string"},
}});
if (!args.target) {
    console.error("usage: fault-proxy.mjs --port P --target http://127.0.0.1:Q");
    process.exit(2);
}
const target = new URL(args.target);
const targetPrefix = target.pathname.replace(/\/$/, "");

let faults = [];
let log = [];
const HOP_BY_HOP = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

const scimError = (status, detail) => ({schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"], status: String(status), detail});
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function sendJson(res, status, value, headers = {}) {
    const body = Buffer.from(JSON.stringify(value));
    res.writeHead(status, {"Content-Type": "application/json", "Content-Length": body.length, ...headers});
    res.end(body);
}

function readBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        req.on("data", (c) => chunks.push(c)).on("end", () => resolve(Buffer.concat(chunks))).on("error", reject);
    });
}

function validate(f) {
    if (Object(f) !== f || Array.isArray(f)) throw new Error("a fault must be a JSON object");
    const fault = {count: 1, match: {}, ...f};
    if (!["status", "delay", "drop"].includes(fault.mode)) throw new Error('"mode" must be "status", "delay" or "drop"');
    if (!Number.isInteger(fault.count) || (fault.count < 1 && fault.count !== -1)) throw new Error('"count" must be a positive integer or -1');
    if (fault.mode === "status" && !(Number.isInteger(fault.status) && fault.status >= 100 && fault.status <= 599)) throw new Error('"status" must be an HTTP status code');
    if (fault.mode === "delay" && !(Number.isFinite(fault.ms) && fault.ms >= 0)) throw new Error('"ms" must be a number of milliseconds');
    if (fault.when !== undefined && !["before", "after"].includes(fault.when)) throw new Error('"when" must be "before" or "after"');
    if (Object(fault.match) !== fault.match) throw new Error('"match" must be an object');
    return fault;
}

// `url` is the request target (path and query), percent-decoded.
function takeFault(method, url, body) {
    const fault = faults.find(({count, match: m}) => count !== 0
        && (!m.method || m.method.toUpperCase() === method)
        && (!m.pathContains || url.includes(m.pathContains))
        && (!m.bodyContains || body.includes(m.bodyContains)));
    if (fault && fault.count > 0) fault.count -= 1;
    return fault;
}

async function control(req, res, path) {
    const body = await readBody(req);
    if (path === "/__faults" && req.method === "POST") {
        try {
            const armed = [JSON.parse(body.toString("utf8") || "null")].flat().map(validate);
            faults.push(...armed);
            return sendJson(res, 201, armed);
        } catch (ex) {
            return sendJson(res, 400, {error: ex.message});
        }
    }
    if (path === "/__faults" && req.method === "GET") return sendJson(res, 200, faults.filter((f) => f.count !== 0));
    if (path === "/__faults" && req.method === "DELETE") {
        faults = [];
        res.writeHead(204).end();
        return;
    }
    if (path === "/__faults/log" && req.method === "GET") return sendJson(res, 200, log);
    if (path === "/__faults/log" && req.method === "DELETE") {
        log = [];
        res.writeHead(204).end();
        return;
    }
    sendJson(res, 404, {error: "no such control endpoint"});
}

// Forwards the buffered request; resolves to {status, headers, body} or rejects on a network error.
function forward(req, body) {
    const headers = {...req.headers};
    for (const h of HOP_BY_HOP) delete headers[h];
    headers["content-length"] = String(body.length);
    return new Promise((resolve, reject) => {
        const upstream = http.request({
            protocol: target.protocol, hostname: target.hostname, port: target.port,
            method: req.method, path: targetPrefix + req.url, headers,
        }, (answer) => {
            readBody(answer).then((data) => resolve({status: answer.statusCode, headers: answer.headers, body: data}), reject);
        });
        upstream.on("error", reject);
        upstream.end(body);
    });
}

function relay(res, {status, headers, body}) {
    const out = {...headers};
    for (const h of HOP_BY_HOP) delete out[h];
    out["content-length"] = String(body.length);
    res.writeHead(status, out);
    res.end(body);
}

async function proxy(req, res) {
    const body = await readBody(req);
    const text = body.toString("utf8");
    let url = req.url;
    try { url = decodeURIComponent(req.url); } catch { /* keep it raw */ }
    const fault = takeFault(req.method, url, text);
    const traceHeaders = Object.fromEntries(["traceparent", "tracestate", "baggage"]
        .filter((h) => req.headers[h] !== undefined).map((h) => [h, req.headers[h]]));
    const entry = {time: new Date().toISOString(), method: req.method, path: req.url, status: null, faulted: !!fault,
        ...(fault ? {mode: fault.mode} : {}), ...(text ? {body: text} : {}), ...traceHeaders};
    log.push(entry);
    let clientGone = false;
    res.on("close", () => { clientGone = !res.writableFinished; });

    if (fault?.mode === "status") {
        if (fault.when === "after") {
            // The target applies the request; its answer is replaced by the fault's.
            try { await forward(req, body); } catch { /* unreachable: the fault answers all the same */ }
            if (clientGone) return;
        }
        const headers = {...(fault.retryAfter !== undefined ? {"Retry-After": String(fault.retryAfter)} : {}), ...fault.headers};
        const payload = fault.body ?? scimError(fault.status, "fault injected by fault-proxy");
        const data = Buffer.from(typeof payload === "string" ? payload : JSON.stringify(payload));
        res.writeHead(fault.status, {
            "Content-Type": typeof payload === "string" ? "text/plain" : "application/scim+json",
            "Content-Length": data.length, ...headers,
        });
        res.end(data);
        entry.status = fault.status;
        return;
    }
    const after = fault?.when === "after";
    if (fault?.mode === "drop" && !after) return req.socket.destroy();
    if (fault?.mode === "delay" && !after) {
        await sleep(fault.ms);
        if (clientGone) return;
    }
    let answer;
    try {
        answer = await forward(req, body);
    } catch (ex) {
        answer = {status: 502, headers: {"content-type": "application/scim+json"},
            body: Buffer.from(JSON.stringify(scimError(502, `fault-proxy: target unreachable: ${ex.code ?? ex.message}`)))};
    }
    if (fault?.mode === "drop") return req.socket.destroy();
    if (fault?.mode === "delay" && after) await sleep(fault.ms);
    if (clientGone) return;
    relay(res, answer);
    entry.status = answer.status;
}

const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://proxy").pathname;
    const handler = path === "/__faults" || path.startsWith("/__faults/") ? control : proxy;
    handler(req, res, path).catch((ex) => {
        console.error(ex);
        if (!res.headersSent) sendJson(res, 500, {error: String(ex)});
        else res.destroy();
    });
});
server.listen(Number(args.port), args.host, () => console.log(`listening on ${server.address().port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
