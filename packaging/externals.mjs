// The packages the agent's bundles leave to Node's require at run time
// (packaging/inline.mjs, packaging/snapshot.mjs): native addons and the
// packages that load them by path (better-sqlite3, usocket), never inlined.
// x11 and abstract-socket are dbus-next's optional requires, absent here.
export const EXTERNAL = ['better-sqlite3', 'usocket', 'x11', 'abstract-socket'];
