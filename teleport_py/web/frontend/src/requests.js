// The access requests page: the requests Auth shows the signed-in user (their
// own, those their review_requests roles cover, or all with an access_request
// list rule), and Approve / Deny with a reason on those Auth says this user
// may review now ("reviewable"). Auth decides every review again; this page
// only relays it (POST with the CSRF token, like every state change).

const STATES = { PENDING: "pending", APPROVED: "approved", DENIED: "denied", EXPIRED: "expired" };

function requested(spec) {
  const parts = [];
  if ((spec.roles || []).length) parts.push(`roles: ${spec.roles.join(", ")}`);
  const ids = (spec.requested_resource_ids || []).map((r) => `/${r.cluster}/${r.kind}/${r.name}${r.sub_resource ? `/${r.sub_resource}` : ""}`);
  if (ids.length) parts.push(`resources: ${ids.join(", ")}`);
  return parts.join("; ");
}

function reviewsOf(spec, el, formatTime) {
  const reviews = spec.reviews || [];
  if (!reviews.length) return "none yet";
  return el("ul", { class: "reviews" }, reviews.map((r) => el("li", { dataset: { author: r.author || "" } },
    `${r.author}: ${r.proposed_state}${r.reason ? ` (“${r.reason}”)` : ""}, ${formatTime(r.created)}`)));
}

export async function requestsPage(context, message = "") {
  const { api, el, show, table, formatTime, session } = context;
  document.title = "Access requests · teleport_py";
  const { items, reviewable } = await api("GET", "access_requests");
  const mayReview = new Set(reviewable || []);
  const notice = el("p", { id: "request-notice", role: "status" }, message);

  function reviewForm(request) {
    const reason = el("input", { name: "reason", placeholder: "Reason", "aria-label": "Reason", maxlength: "4096" });
    const error = el("span", { role: "alert", class: "review-error" }, "");
    const send = (state) => async () => {
      error.textContent = "";
      try {
        const updated = await api("POST", `access_requests/${encodeURIComponent(request.metadata.name)}/reviews`,
          { state, reason: reason.value });
        await requestsPage(context,
          `You ${state === "APPROVED" ? "approved" : "denied"} ${request.spec.user}'s request; it is now ${updated.spec.state}.`);
      } catch (e) {
        error.textContent = e.message;
      }
    };
    return el("div", { class: "review" }, reason,
      el("button", { type: "button", class: "approve", onclick: send("APPROVED") }, "Approve"),
      el("button", { type: "button", class: "deny", onclick: send("DENIED") }, "Deny"),
      error);
  }

  const rows = items.slice().reverse().map((request) => {
    const { metadata, spec } = request;
    const state = spec.state || "";
    return el("tr", { dataset: { request: metadata.name, state, user: spec.user || "" }, class: `state-${STATES[state] || "other"}` },
      el("td", {}, el("code", {}, metadata.name)),
      el("td", {}, spec.user || ""),
      el("td", {}, el("span", { class: "state" }, state)),
      el("td", {}, requested(spec)),
      el("td", {}, spec.request_reason || ""),
      el("td", {}, reviewsOf(spec, el, formatTime), spec.resolve_reason ? el("p", {}, `Resolved: ${spec.resolve_reason}`) : null),
      el("td", {}, `created ${formatTime(spec.created)}`, el("br"),
        state === "PENDING" ? `waits until ${formatTime(metadata.expires)}` : `access until ${formatTime(spec.expires)}`),
      el("td", {}, mayReview.has(metadata.name) ? reviewForm(request)
        : spec.user === session.user && state === "PENDING" ? el("span", { class: "muted" }, "your request: others review it") : ""));
  });
  show(el("h1", {}, "Access requests"),
    el("p", { class: "muted" }, "Request access with ", el("code", {}, "tsh request create --roles=ROLE --reason=WHY"), "."),
    notice,
    items.length ? table(["Id", "Requester", "State", "Requested", "Reason", "Reviews", "When", ""], rows, { id: "requests" })
      : el("p", { id: "no-requests" }, "No access requests you may see."));
}
