import type { Queryable } from './database';

/** Names of the settings migration 0007 keeps in kiln_settings. */
export type SettingName = 'deployment_id' | 'hmac_v1_until';

/**
 * A setting's value, or undefined when it was never set.
 * In: the setting's name. Out: its text. Errors: only the database's own.
 */
export async function readSetting(q: Queryable, name: SettingName): Promise<string | undefined> {
  const { rows } = await q.query<{ value: string }>('select value from kiln_settings where name = $1::text', [name]);
  return rows[0]?.value;
}

/**
 * Set a setting (insert or replace) and answer the value now stored.
 * In: name and value. Out: the stored text. Errors: only the database's own.
 */
export async function writeSetting(q: Queryable, name: SettingName, value: string): Promise<string> {
  const { rows } = await q.query<{ value: string }>(
    `insert into kiln_settings (name, value) values ($1::text, $2::text)
     on conflict (name) do update set value = excluded.value, updated_at = now()
     returning value`,
    [name, value],
  );
  return rows[0].value;
}
