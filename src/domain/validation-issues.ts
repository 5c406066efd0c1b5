/**
 * Schema-validation errors (Ajv's shape) worded for the person who sent the request: one issue per bad field, a
 * choice of values named as such ("must be one of queued, building"), not as the branches of an `anyOf` each failing
 * on its own, and numbers with the right grammar. Pure.
 */

/** The parts of an Ajv error object this reads. */
export interface SchemaError {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
}

export interface Issue {
  path: string;
  message: string;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

const ARTICLE: Record<string, string> = {
  string: 'a string',
  integer: 'an integer',
  number: 'a number',
  boolean: 'true or false',
  object: 'an object',
  array: 'an array',
  null: 'null',
};

const FORMATS: Record<string, string> = {
  'date-time': 'a date-time in RFC 3339 form (2026-12-01T00:00:00Z)',
  date: 'a date (2026-12-01)',
  uri: 'an absolute URI',
  url: 'an absolute URL',
  email: 'an e-mail address',
  uuid: 'a UUID',
};

const show = (value: unknown) => (typeof value === 'string' ? value : JSON.stringify(value));

/** "a, b or c". */
function either(values: string[]): string {
  return values.length <= 1 ? (values[0] ?? '') : `${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`;
}

/** The words for one error, or undefined to keep Ajv's own. */
function wording(error: SchemaError): string | undefined {
  const p = error.params;
  const n = Number(p.limit);
  switch (error.keyword) {
    case 'type': {
      const types = String(p.type).split(',');
      return `must be ${either(types.map((type) => ARTICLE[type] ?? type))}`;
    }
    case 'const':
      return `must be ${show(p.allowedValue)}`;
    case 'enum':
      return `must be one of ${(p.allowedValues as unknown[]).map(show).join(', ')}`;
    case 'minLength':
      return n === 1 ? 'must not be empty' : `must be at least ${plural(n, 'character')} long`;
    case 'maxLength':
      return `must be at most ${plural(n, 'character')} long`;
    case 'minimum':
      return `must be at least ${n}`;
    case 'maximum':
      return `must be at most ${n}`;
    case 'exclusiveMinimum':
      return `must be greater than ${n}`;
    case 'exclusiveMaximum':
      return `must be less than ${n}`;
    case 'minItems':
      return `must have at least ${plural(n, 'item')}`;
    case 'maxItems':
      return `must have at most ${plural(n, 'item')}`;
    case 'minProperties':
      return `must have at least ${plural(n, 'field')}`;
    case 'maxProperties':
      return `must have at most ${plural(n, 'field')}`;
    case 'uniqueItems':
      return 'must not repeat an item';
    case 'multipleOf':
      return `must be a multiple of ${show(p.multipleOf)}`;
    case 'pattern':
      return `must match the pattern ${show(p.pattern)}`;
    case 'format':
      return `must be ${FORMATS[String(p.format)] ?? `a valid ${String(p.format)}`}`;
    default:
      return undefined;
  }
}

/**
 * One issue per field, in the order the fields first failed. `context` prefixes each path (`body`, `query`,
 * `params`, `headers`). An `anyOf` (a choice of literals, or of types) becomes one issue listing what is allowed;
 * the failures of its branches are dropped.
 */
export function issuesFrom(errors: readonly SchemaError[], context: string): Issue[] {
  // What each anyOf's branches allowed, by the instance path they failed at.
  const choices = new Map<string, { values: string[]; types: string[] }>();
  for (const error of errors) {
    if (error.keyword !== 'anyOf') continue;
    choices.set(error.instancePath, { values: [], types: [] });
  }
  const underChoice = (path: string) => {
    for (const choice of choices.keys()) if (path === choice || path.startsWith(`${choice}/`)) return choice;
    return undefined;
  };
  for (const error of errors) {
    const choice = choices.get(error.instancePath);
    if (!choice) continue;
    if (error.keyword === 'const') choice.values.push(show(error.params.allowedValue));
    if (error.keyword === 'enum') choice.values.push(...(error.params.allowedValues as unknown[]).map(show));
    if (error.keyword === 'type') {
      for (const type of String(error.params.type).split(',')) choice.types.push(ARTICLE[type] ?? type);
    }
  }

  // A choice one of whose branches matched the value's type but failed a check of its own (a string too long for
  // "string or null", an object with a field not allowed): that check is the issue, not the list of types.
  const CHOICE_NOISE = new Set(['type', 'const', 'enum', 'anyOf']);
  const detailed = new Set<string>();
  for (const error of errors) {
    const choice = underChoice(error.instancePath);
    if (choice !== undefined && !CHOICE_NOISE.has(error.keyword)) detailed.add(choice);
  }

  const issues = new Map<string, string>();
  for (const error of errors) {
    const choice = underChoice(error.instancePath);
    if (choice !== undefined && detailed.has(choice) && CHOICE_NOISE.has(error.keyword)) continue;
    const base = `${context}${error.instancePath.replaceAll('/', '.')}`;
    let path = base;
    let message: string;
    if (error.keyword === 'additionalProperties') {
      path = `${base}.${String(error.params.additionalProperty)}`;
      message = 'is not an allowed field';
    } else if (error.keyword === 'required') {
      path = `${base}.${String(error.params.missingProperty)}`;
      message = 'is required';
    } else if (error.keyword === 'anyOf') {
      const choice = choices.get(error.instancePath) as { values: string[]; types: string[] };
      const allowed = [...(choice.values.length > 0 ? [`one of ${choice.values.join(', ')}`] : []), ...choice.types];
      message = allowed.length > 0 ? `must be ${either([...new Set(allowed)])}` : 'does not match any allowed form';
    } else {
      // A branch of a choice: the choice speaks for it, unless the branch's own check is the issue (above).
      if (choice !== undefined && !detailed.has(choice)) continue;
      message = wording(error) ?? error.message ?? 'is invalid';
    }
    // The first failure of a field is the one reported; an anyOf replaces its branches' (reported before it).
    if (!issues.has(path) || error.keyword === 'anyOf') issues.set(path, message);
  }
  return [...issues].map(([path, message]) => ({ path, message }));
}
