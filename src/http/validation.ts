import { Ajv, type Options, type ValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';
import type { FastifySchemaCompiler } from 'fastify';

function makeAjv(options: Options): Ajv {
  const ajv = new Ajv({ allErrors: true, removeAdditional: false, useDefaults: true, strict: false, ...options });
  addFormats.default(ajv);
  return ajv;
}

/**
 * Bodies are validated strictly (a string where a number belongs is an error, not a conversion); query
 * strings and path parameters are text by nature, so they are coerced to the schema's types. Every
 * failing field is reported, not only the first.
 */
export function validatorCompiler(): FastifySchemaCompiler<unknown> {
  const strict = makeAjv({ coerceTypes: false });
  const coercing = makeAjv({ coerceTypes: 'array' });
  return ({ schema, httpPart }) => {
    const validate = (httpPart === 'body' ? strict : coercing).compile(schema as object);
    if (httpPart !== 'body' || (schema as Record<string, unknown>)[OPTIONAL_BODY] !== true) return validate;
    // Fastify hands an absent body to the validator as null.
    const allowEmpty = (data: unknown): boolean => {
      const absent = data === undefined || data === null;
      const ok = absent || validate(data);
      allowEmpty.errors = absent ? null : validate.errors;
      return ok;
    };
    allowEmpty.errors = null as typeof validate.errors;
    return allowEmpty;
  };
}

const OPTIONAL_BODY = 'x-optional-body';

/** A body validator for a schema checked outside Fastify's own pass (the items of a batch, one by one). */
export function bodyValidator(schema: object): ValidateFunction {
  return makeAjv({ coerceTypes: false }).compile(schema);
}

/** Mark a body schema as optional: a request with no body at all passes; a body that is sent must match. */
export function optionalBody<T extends object>(schema: T): T {
  return Object.assign(schema, { [OPTIONAL_BODY]: true });
}
