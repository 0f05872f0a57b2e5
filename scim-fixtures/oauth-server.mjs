// OAuth2 issuer for the client_credentials grant, one registered client.
//   node oauth-server.mjs --port P --client-id ID --client-secret S [--expires-in SECONDS]
// Issuer: http://127.0.0.1:P; token endpoint: /token; keys: /jwks. Access tokens are RS256 JWTs.
import {OAuth2Server} from "oauth2-mock-server";
import {timingSafeEqual} from "node:crypto";
import {parseArgs} from "node:util";

const {values: args} = parseArgs({options: {
    port: {type: "string", default: "0"},
    "client-id": {type: "string"},
    "client-secret": {type: "string"},
    "expires-in": {type: "string", default: "3600"},
}});
const expiresIn = Number(args["expires-in"]);
if (!args["client-id"] || !args["client-secret"] || !Number.isInteger(expiresIn) || expiresIn <= 0) {
    console.error("usage: oauth-server.mjs --port P --client-id ID --client-secret S [--expires-in SECONDS]");
    process.exit(2);
}

const same = (a, b) => a.length === b.length && timingSafeEqual(a, b);
const decode = (s) => { try { return decodeURIComponent(s.replace(/\+/g, " ")); } catch { return s; } };

// Client credentials from HTTP Basic or from the form body. RFC 6749 2.3.1 form-encodes id and secret before
// base64; many clients do not, so both readings are accepted.
function credentials(req) {
    const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? "");
    if (!basic) return [{id: req.body?.client_id, secret: req.body?.client_secret}];
    const pair = Buffer.from(basic[1], "base64").toString("utf8");
    const colon = pair.indexOf(":");
    if (colon < 0) return [];
    const id = pair.slice(0, colon), secret = pair.slice(colon + 1);
    return [{id, secret}, {id: decode(id), secret: decode(secret)}];
}
const matches = ({id, secret}) => typeof id === "string" && typeof secret === "string"
    && same(Buffer.from(id), Buffer.from(args["client-id"])) && same(Buffer.from(secret), Buffer.from(args["client-secret"]));
const clientId = (req) => credentials(req).find(matches)?.id;

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");

server.service.on("beforeTokenSigning", (token, req) => {
    const now = Math.floor(Date.now() / 1000);
    Object.assign(token.payload, {iat: now, nbf: now, exp: now + expiresIn, sub: clientId(req), client_id: clientId(req)});
});
server.service.on("beforeResponse", (response, req) => {
    if (req.body?.grant_type !== "client_credentials") {
        response.statusCode = 400;
        response.body = {error: "unsupported_grant_type"};
    } else if (clientId(req) === undefined) {
        response.statusCode = 401;
        response.body = {error: "invalid_client", error_description: "unknown client or wrong secret"};
    } else {
        response.body.expires_in = expiresIn;
        if (response.body.scope === undefined) delete response.body.scope;
    }
});

await server.start(Number(args.port), "127.0.0.1");
server.issuer.url = `http://127.0.0.1:${server.address().port}`; // the library would say "localhost"
console.log(`listening on ${server.address().port}`);
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.stop().finally(() => process.exit(0)));
