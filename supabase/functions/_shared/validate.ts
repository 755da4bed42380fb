/**
 * Request bodies checked with zod: anything that does not fit is a 400 problem that names each field;
 * unknown fields are rejected, never read.
 * @module
 */
import { z } from "npm:zod@4.6.7";
import { HttpError } from "./errors.ts";

export { z };

/** Parses `body` with `schema` or throws a 400 `validation` problem listing the fields. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.output<T> {
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const errors = result.error.issues.flatMap((issue) => {
    const at = issue.path.map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`)).join("").replace(
      /^\./,
      "",
    );
    if (issue.code === "unrecognized_keys") {
      return issue.keys.map((k) => ({ field: at ? `${at}.${k}` : k, message: "unknown field" }));
    }
    return [{ field: at || "(body)", message: issue.message }];
  });
  throw new HttpError(
    400,
    "validation",
    "Invalid request",
    errors.map((e) => `${e.field}: ${e.message}`).join("; "),
    {
      errors,
    },
  );
}
