// In-memory SCIM 2.0 target (Users, Groups) built on SCIMMY, served under /scim/v2.
//   node server.mjs --port P --bearer-token T
//   node server.mjs --port P --oauth-issuer http://127.0.0.1:Q   (JWT access tokens from that issuer)
import express from "express";
import SCIMMY from "scimmy";
import SCIMMYRouters from "scimmy-routers";
import {createRemoteJWKSet, jwtVerify} from "jose";
import {randomUUID} from "node:crypto";
import {parseArgs} from "node:util";

const {values: args} = parseArgs({options: {
    port: {type: "string", default: "0"},
    host: {type: "string", default: "127.0.0.1"},
    "bearer-token": {type: "string"},
    "oauth-issuer": {type: "string"},
}});
if (!args["bearer-token"] === !args["oauth-issuer"]) {
    console.error("usage: server.mjs --port P (--bearer-token T | --oauth-issuer URL)");
    process.exit(2);
}

// One in-memory collection per resource type; `unique` names an attribute that must not repeat. It is compared
// exactly, like SCIMMY's filters compare it, so a 409 is always followed by a look-up that finds the holder.
// `onDelete` runs after a resource is removed.
function declare(Resource, unique, onDelete = () => {}) {
    const items = new Map();
    const notFound = (id) => new SCIMMY.Types.Error(404, null, `Resource ${id} not found`);
    SCIMMY.Resources.declare(Resource
        .ingress((resource, instance) => {
            const data = JSON.parse(JSON.stringify(instance));
            if (unique && [...items.values()].some((i) => i.id !== resource.id && i[unique] === data[unique]))
                throw new SCIMMY.Types.Error(409, "uniqueness", `${unique} "${data[unique]}" is already in use`);
            const now = new Date().toISOString();
            const previous = resource.id && items.get(resource.id);
            if (resource.id && !previous) throw notFound(resource.id);
            const stored = {...data, id: resource.id ?? randomUUID(), meta: {created: previous?.meta.created ?? now, lastModified: now}};
            items.set(stored.id, stored);
            return stored;
        })
        .egress((resource) => {
            if (resource.id) {
                if (!items.has(resource.id)) throw notFound(resource.id);
                return items.get(resource.id);
            }
            const all = [...items.values()];
            return resource.filter ? resource.filter.match(all) : all;
        })
        .degress((resource) => {
            if (!items.delete(resource.id)) throw notFound(resource.id);
            onDelete(resource.id);
        }));
    return items;
}
// Users carry the enterprise extension (employeeNumber, department, manager, ...), optional.
SCIMMY.Resources.User.extend(SCIMMY.Schemas.EnterpriseUser, false);
// A deleted user leaves every group it was a member of.
declare(SCIMMY.Resources.User, "userName", (id) => {
    for (const g of groups.values()) if (g.members) g.members = g.members.filter((m) => m.value !== id);
});
const groups = declare(SCIMMY.Resources.Group);

// No cool-down between key fetches: an issuer restarted with new keys is picked up at once.
const jwks = args["oauth-issuer"]
    && createRemoteJWKSet(new URL(`${args["oauth-issuer"].replace(/\/$/, "")}/jwks`), {cooldownDuration: 0});
async function authenticate(token) {
    if (!token) throw new Error("Missing bearer token");
    if (args["bearer-token"]) {
        if (token !== args["bearer-token"]) throw new Error("Invalid bearer token");
        return;
    }
    try {
        await jwtVerify(token, jwks, {issuer: args["oauth-issuer"]});
    } catch (ex) {
        throw new Error(`Invalid access token: ${ex.code ?? ex.message}`);
    }
}

const app = express().disable("etag").disable("x-powered-by");
app.use("/scim/v2", async (req, res, next) => {
    try {
        await authenticate(/^Bearer\s+(\S+)$/i.exec(req.get("Authorization") ?? "")?.[1]);
        next();
    } catch (ex) {
        res.status(401).set({"Content-Type": "application/scim+json", "WWW-Authenticate": 'Bearer realm="scim"'})
            .send(new SCIMMY.Messages.Error({status: 401, message: ex.message}));
    }
});
// Express 5 re-parses req.query on every read, which drops scimmy-routers' numeric casting of count/startIndex.
app.use("/scim/v2", (req, res, next) => {
    Object.defineProperty(req, "query", {value: {...req.query}, writable: true});
    next();
});
app.use("/scim/v2", new SCIMMYRouters({type: "bearer", handler: () => undefined}));

const server = app.listen(Number(args.port), args.host, () => console.log(`listening on ${server.address().port}`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
