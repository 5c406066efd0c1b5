import type { Queryable } from './database';

/** A project as the API shows it (SPEC section 5). */
export interface Project {
  id: string;
  ownerId: string;
  name: string;
  framework: string | null;
  settings: Record<string, unknown>;
  allowConcurrentBuilds: boolean;
  version: number;
  createdAt: string;
  updatedAt: string;
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
}

const COLUMNS = 'id, owner_id, name, framework, settings, allow_concurrent_builds, version, created_at, updated_at';

function toProject(row: DbProject): Project {
  return {
    id: row.id,
    ownerId: row.owner_id,
    name: row.name,
    framework: row.framework,
    settings: row.settings,
    allowConcurrentBuilds: row.allow_concurrent_builds,
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
 * In: a project id; `forUpdate` locks its row for the caller's transaction. Out: the project, or undefined.
 * Errors: only the database's own.
 */
export async function findProject(q: Queryable, id: string, forUpdate = false): Promise<Project | undefined> {
  const { rows } = await q.query<DbProject>(
    `select ${COLUMNS} from projects where id = $1::text${forUpdate ? ' for update' : ''}`,
    [id],
  );
  return rows[0] ? toProject(rows[0]) : undefined;
}

/** In: project ids. Out: those that exist, in no particular order. Errors: only the database's own. */
export async function findProjects(q: Queryable, ids: string[]): Promise<Project[]> {
  const { rows } = await q.query<DbProject>(`select ${COLUMNS} from projects where id = any($1::text[])`, [ids]);
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
      where id = $1::text and version = $2::int
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
