/**
 * Compiled (never run) by tests/test_typescript_client.py with `tsc --strict --noEmit`:
 * it proves what a frontend team relies on in the generated client.
 *
 * (a) Create bodies do not require fields with a server default (lifecycle_stage, type,
 *     tags, custom_fields on a customer); update bodies cannot send null for fields the
 *     API refuses to clear.
 * (b) Error responses are typed: `error` is the RFC 9457 Problem schema, not `{}`.
 */
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

type Problem = components["schemas"]["Problem"];
type CustomerCreate = components["schemas"]["CustomerCreate"];
type CustomerUpdate = components["schemas"]["CustomerUpdate"];

type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
function assertType<T extends true>(): T | undefined {
  return undefined;
}

const client = createClient<paths>({ baseUrl: "http://127.0.0.1:8000" });

// (a) only `name` is required: the defaulted fields may be left out.
const minimal: CustomerCreate = { name: "上海明远贸易有限公司" };
const full: CustomerCreate = { name: "Acme", lifecycle_stage: "prospect", type: "company" };
// @ts-expect-error an unknown lifecycle stage is not a LifecycleStage
const wrongStage: CustomerCreate = { name: "Acme", lifecycle_stage: "won" };
// @ts-expect-error name is required
const noName: CustomerCreate = {};

// PATCH: null clears an optional field, but a required one may only be omitted.
const clearGrade: CustomerUpdate = { grade: null };
// @ts-expect-error name cannot be cleared
const clearName: CustomerUpdate = { name: null };
// @ts-expect-error lifecycle_stage cannot be cleared
const clearStage: CustomerUpdate = { lifecycle_stage: null };

export async function createCustomer(token: string): Promise<string> {
  const { data, error, response } = await client.POST("/v1/customers", {
    body: minimal,
    headers: { Authorization: `Bearer ${token}`, "Idempotency-Key": "usage-example-1" },
  });
  if (error) {
    // (b) the error is a Problem: these fields exist and are typed.
    assertType<Equals<typeof error, Problem>>();
    const code: string = error.code;
    const status: number = error.status;
    const fields: string[] = (error.errors ?? []).map((e) => `${e.field}: ${e.code}`);
    throw new Error(`${status} ${code} (${response.status}): ${fields.join(", ")}`);
  }
  assertType<Equals<typeof data.lifecycle_stage, components["schemas"]["LifecycleStage"]>>();
  return data.id;
}

export async function listCustomers(token: string): Promise<number> {
  const { data, error } = await client.GET("/v1/customers", {
    params: { query: { limit: 10, lifecycle_stage: ["lead", "prospect"] } },
    headers: { Authorization: `Bearer ${token}` },
  });
  if (error) {
    assertType<Equals<typeof error, Problem>>();
    return error.status;
  }
  return data.data.length;
}

export const examples = { full, wrongStage, noName, clearGrade, clearName, clearStage };
