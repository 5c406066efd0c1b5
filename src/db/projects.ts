import type { Queryable } from './database';

/** A project as the API shows it (SPEC section 5). */
export interface Project {
  id: string;
  ownerId: string;
  name: string;
  framework: string | null;
  settings: Record<string, unknown>;
  allowConcurrentBuilds: boolean;
  /** Where build events are POSTed (null: nowhere). */
  webhookUrl: string | null;
  /** The endpoint's state, when there is one. */
  webhook: WebhookStatus | null;
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** A webhook endpoint's state: working, failing since an instant, or disabled (and why). */
export interface WebhookStatus {
  status: 'active' | 'failing' | 'disabled';
  failingSince: string | null;
  disabledAt: string | null;
  /** `gone` (the endpoint answered 410) or `failing` (it failed for WEBHOOK_DISABLE_AFTER_S). */
  disabledReason: string | null;
  /** Until when the previous secret also signs (after a rotation or a new URL), if it does. */
  previousSecretValidUntil: string | null;
}

/** The writable fields of a project. */
export interface ProjectFields {
  ownerId: string;
  name: string;
  framework: string | null;
  settings: Record<string, unknown>;
  allowConcurrentBuilds: boolean;
}

interface DbProject {
  id: string;
  owner_id: string;
  name: string;
  framework: string | null;
  settings: Record<string, unknown>;
  allow_concurrent_builds: boolean;
  version: number;
  created_at: Date;
  updated_at: Date;
  webhook_url: string | null;
  webhook_failing_since: Date | null;
  webhook_disabled_at: Date | null;
  webhook_disabled_reason: string | null;
  webhook_previous_secret_until: Date | null;
}

const COLUMNS = `id, owner_id, name, framework, settings, allow_concurrent_builds, version, created_at, updated_at,
  webhook_url, webhook_failing_since, webhook_disabled_at, webhook_disabled_reason,
  case when webhook_previous_secret_until > now() then webhook_previous_secret_until end
    as webhook_previous_secret_until`;

function webhookStatus(row: DbProject): WebhookStatus | null {
  if (row.webhook_url === null) return null;
  return {
    status: row.webhook_disabled_at ? 'disabled' : row.webhook_failing_since ? 'failing' : 'active',
    failingSince: row.webhook_failing_since?.toISOString() ?? null,
    disabledAt: row.webhook_disabled_at?.toISOString() ?? null,
    disabledReason: row.webhook_disabled_reason,
    previousSecretValidUntil: row.webhook_previous_secret_until?.toISOString() ?? null,
  };
}

function toProject(row: DbProject): Project {
  return {
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    framework: row.framework,
    settings: row.settings,
    allowConcurrentBuilds: row.allow_concurrent_builds,
    webhookUrl: row.webhook_url,
    webhook: webhookStatus(row),
    version: row.version,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

/** Insert a project; undefined when the id is taken. */
export async function insertProject(q: Queryable, id: string, fields: ProjectFields): Promise<Project | undefined> {
  const { rows } = await q.query<DbProject>(
    `insert into projects (id, owner_id, name, framework, settings, allow_concurrent_builds)
     values ($1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::boolean)
     on conflict (id) do nothing
     returning ${COLUMNS}`,
    [id, fields.ownerId, fields.name, fields.framework, JSON.stringify(fields.settings), fields.allowConcurrentBuilds],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}

/**
 * In: a project id, in the caller's transaction. Locks its row (FOR UPDATE) whether or not it is deleted: a build
 * being queued for it (build_create holds the row FOR SHARE) commits first and is seen by the next statement, and a
 * build arriving later waits, then finds the project deleted. Out: whether the project is missing, already deleted
 * or live. Errors: only the database's own.
 */
export async function lockProjectForDeletion(q: Queryable, id: string): Promise<'missing' | 'deleted' | 'live'> {
  const { rows } = await q.query<{ deleted: boolean }>(
    'select deleted_at is not null as deleted from projects where id = $1::text for update',
    [id],
  );
  if (!rows[0]) return 'missing';
  return rows[0].deleted ? 'deleted' : 'live';
}

/** Mark a project deleted (its row stays, for its builds and the books). In: a live project locked by the caller. */
export async function markProjectDeleted(q: Queryable, id: string): Promise<void> {
  await q.query(
    'update projects set deleted_at = now(), version = version + 1, updated_at = now() where id = $1::text',
    [id],
  );
}

/** True when a project with this id exists, deleted or not (ids are never reused). */
export async function projectIdTaken(q: Queryable, id: string): Promise<{ deleted: boolean } | undefined> {
  const { rows } = await q.query<{ deleted: boolean }>(
    'select deleted_at is not null as deleted from projects where id = $1::text',
    [id],
  );
  return rows[0];
}

/**
 * In: a project id; `forUpdate` locks its row for the caller's transaction. Out: the project, or undefined.
 * Errors: only the database's own.
 */
export async function findProject(q: Queryable, id: string, forUpdate = false): Promise<Project | undefined> {
  const { rows } = await q.query<DbProject>(
    `select ${COLUMNS} from projects where id = $1::text and deleted_at is null${forUpdate ? ' for update' : ''}`,
    [id],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}

/** In: project ids. Out: those that exist, in no particular order. Errors: only the database's own. */
export async function findProjects(q: Queryable, ids: string[]): Promise<Project[]> {
  const { rows } = await q.query<DbProject>(
    `select ${COLUMNS} from projects where id = any($1::text[]) and deleted_at is null`,
    [ids],
  );
  return rows.map(toProject);
}

/**
 * Write new fields and bump the version, only if the version is still `expectedVersion` (optimistic
 * concurrency). Undefined when the project changed meanwhile.
 */
export async function updateProject(
  q: Queryable,
  id: string,
  expectedVersion: number,
  fields: ProjectFields,
): Promise<Project | undefined> {
  const { rows } = await q.query<DbProject>(
    `update projects set owner_id = $3::text, name = $4::text, framework = $5::text, settings = $6::jsonb,
            allow_concurrent_builds = $7::boolean, version = version + 1, updated_at = now()
      where id = $1::text and version = $2::int and deleted_at is null
     returning ${COLUMNS}`,
    [
      id,
      expectedVersion,
      fields.ownerId,
      fields.name,
      fields.framework,
      JSON.stringify(fields.settings),
      fields.allowConcurrentBuilds,
    ],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}

/** How a write changes a project's webhook endpoint. */
export type WebhookChange =
  /** Remove the endpoint and its secrets. */
  | { kind: 'remove' }
  /**
   * Point at `url` and enable it (clearing a failing or disabled state). `secret`: a new signing secret, the one it
   * replaces signing too for `overlapS` seconds; undefined keeps the current secret.
   */
  | { kind: 'set'; url: string; secret?: string; overlapS: number };

/**
 * Apply a webhook change to a project (the version is the caller's business: a rewrite bumps it already).
 * In: the project id and the change. Out: the project, or undefined when there is none. Errors: the database's own.
 */
export async function writeProjectWebhook(
  q: Queryable,
  id: string,
  change: WebhookChange,
): Promise<Project | undefined> {
  const set = change.kind === 'set';
  const { rows } = await q.query<DbProject>(
    `update projects
        set webhook_url = $2::text,
            webhook_secret = case when $2::text is null then null else coalesce($3::text, webhook_secret) end,
            webhook_previous_secret = case
              when $2::text is null then null when $3::text is not null then webhook_secret
              else webhook_previous_secret end,
            webhook_previous_secret_until = case
              when $2::text is null then null
              when $3::text is not null and webhook_secret is not null then now() + make_interval(secs => $4::int)
              when $3::text is not null then null
              else webhook_previous_secret_until end,
            -- a new URL starts afresh; naming the same one again re-enables it if disabled, and keeps a
            -- failing period running otherwise (a client saving the project often must not hide a dead endpoint)
            webhook_failing_since = case when $2::text is distinct from webhook_url or webhook_disabled_at is not null
                                         then null else webhook_failing_since end,
            webhook_last_failure_at = case when $2::text is distinct from webhook_url or webhook_disabled_at is not null
                                           then null else webhook_last_failure_at end,
            webhook_disabled_at = null, webhook_disabled_reason = null
      where id = $1::text
     returning ${COLUMNS}`,
    [id, set ? change.url : null, set ? (change.secret ?? null) : null, set ? change.overlapS : 0],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}

/** The project's current signing secret (null without an endpoint). In: its id. Errors: the database's own. */
export async function projectWebhookSecret(q: Queryable, id: string): Promise<string | null | undefined> {
  const { rows } = await q.query<{ secret: string | null }>(
    `select webhook_secret as secret from projects where id = $1::text`,
    [id],
  );
  return rows[0]?.secret;
}

/**
 * Replace the project's signing secret, the current one signing too for `overlapS` seconds; the endpoint's state
 * is left as it is. In: the project id, the new secret, the overlap. Out: the project, or undefined when it has
 * no endpoint (or does not exist). Errors: the database's own.
 */
export async function rotateProjectSecret(
  q: Queryable,
  id: string,
  secret: string,
  overlapS: number,
): Promise<Project | undefined> {
  const { rows } = await q.query<DbProject>(
    `update projects
        set webhook_previous_secret = webhook_secret, webhook_secret = $2::text,
            webhook_previous_secret_until = now() + make_interval(secs => $3::int)
      where id = $1::text and webhook_url is not null and deleted_at is null
     returning ${COLUMNS}`,
    [id, secret, overlapS],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}
