// The protocol's HTTP and WebSocket calls (docs/protocol.md), and nothing else.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.reason ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? "http_error";
    this.body = body ?? {};
  }
}

export class Api {
  constructor() {
    this.token = null;
    this.user = null;
    this.grants = [];
    this.devUser = null; // set when the token came from /v1/dev/token: re-minted on expiry
    this.devModerator = false;
  }

  setToken(token) {
    // The payload is base64url JSON (docs/protocol.md, Tokens): read, not verified, here.
    // The server writes it as ASCII (json.dumps escapes the rest), so atob's bytes are it.
    const payload = JSON.parse(atob(token.split(".")[0].replace(/-/g, "+").replace(/_/g, "/")));
    this.token = token;
    this.user = payload.sub;
    this.grants = payload.grants ?? [];
  }

  async devLogin(user, moderator = false) {
    const data = await this.call("POST", "/v1/dev/token", { user, moderator });
    this.devUser = user;
    this.devModerator = moderator;
    this.setToken(data.token);
  }

  async call(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const r = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const data = await r.json().catch(() => null);
      if (r.ok) return data;
      if (r.status === 401 && this.devUser && attempt === 0) {
        await this.devLogin(this.devUser, this.devModerator); // a dev token lasts an hour
        continue;
      }
      throw new ApiError(r.status, data);
    }
  }

  spaces() {
    return this.call("GET", "/v1/spaces");
  }

  space(id) {
    return this.call("GET", `/v1/spaces/${id}`);
  }

  act(space, action, fields = {}) {
    return this.call("POST", `/v1/spaces/${space}/actions`, { action, ...fields });
  }

  // The event stream: browsers cannot set headers on a WebSocket, so the token goes in
  // the query (the one route that takes ?token=).
  events(space) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = encodeURIComponent(this.token);
    return new WebSocket(`${scheme}://${location.host}/v1/spaces/${space}/events?token=${token}`);
  }
}
