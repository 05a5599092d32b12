// What the token may do (GET /me, which any valid token may ask): the page shows only the controls it can use.
// The API refuses the rest anyway; this only spares the user controls that could only fail.

import { api } from "./api.js";
import { h } from "./dom.js";

// Its tasks run a program on the processors' hosts: creating or editing one needs the scope tasks:command.
export const COMMAND_TYPE = "command";

/** Until GET /me has answered for the token: nothing that changes anything is shown. */
export const NOBODY = Object.freeze({
  subject: "", scopes: [], may_read: false, may_write: false, may_write_commands: false, admin: false,
});

/** {subject, scopes, may_read, may_write, may_write_commands, admin} of the token in use. */
export function whoAmI() {
  return api("GET", "/me");
}

/** Whether `access` may create a task of `type`, or edit one of that type (or turn one into it). */
export function mayWriteType(access, type) {
  return access.may_write && (type !== COMMAND_TYPE || access.may_write_commands);
}

/** What the token may do, in words (the title of the scopes shown beside the token control). */
function abilities(access) {
  if (access.admin) return "Admin: may do everything.";
  if (access.may_write_commands) return "May read and change tasks, command tasks included.";
  if (access.may_write) return "May read and change tasks, but not create or edit command tasks (tasks:command).";
  if (access.may_read) return "May read tasks, not change them.";
  return "May not read tasks.";
}

/** Fills `el` with the subject and the scopes of `access`; hidden while no token has answered. */
export function showIdentity(el, access) {
  el.hidden = !access.subject;
  el.title = access.subject ? abilities(access) : "";
  if (!access.subject) {
    el.replaceChildren();
    return;
  }
  const scopes = access.scopes.length
    ? access.scopes.flatMap((scope, i) => [i ? " " : "", h("code", { class: "scope" }, scope)])
    : ["no scopes"];
  el.replaceChildren("Signed in as ", h("strong", { class: "subject" }, access.subject), " · ", ...scopes);
}
