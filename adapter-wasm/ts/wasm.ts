import type { Core } from './switchboard_wasm.js';

/** The glue's exports the shell uses. */
export interface CoreModule {
  Core: typeof Core;
}

let loading: Promise<CoreModule> | undefined;

/**
 * Loads the wasm-bindgen glue and the `.wasm` beside it, once per page and only when a client
 * first connects: importing the client costs no wasm download. A failed load is tried again
 * by the next connect.
 */
export function loadCore(wasmUrl?: string | URL): Promise<CoreModule> {
  return (loading ??= import('./switchboard_wasm.js')
    .then(async (glue) => {
      await glue.default(wasmUrl === undefined ? undefined : { module_or_path: wasmUrl });
      return glue;
    })
    .catch((error: unknown) => {
      loading = undefined;
      throw error;
    }));
}
