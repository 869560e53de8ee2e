// eslint for the dashboard's scripts (app/static/*.js): errors only; layout is prettier's.
// Run from the repository root:  npm ci --prefix .ci/js && npx --prefix .ci/js eslint -c .ci/js/eslint.config.mjs app/static
import globals from "globals";
import js from "@eslint/js";

// common.js and charts.js are classic scripts that define the globals HP and Charts; the ES modules use them.
const modules = { ...globals.browser, HP: "readonly", Charts: "readonly" };

export default [
  js.configs.recommended,
  {
    files: ["app/static/common.js", "app/static/charts.js"],
    languageOptions: { sourceType: "script", globals: globals.browser },
    rules: { "no-unused-vars": ["error", { varsIgnorePattern: "^(HP|Charts)$", caughtErrors: "none" }] },
  },
  {
    files: ["app/static/*.js"],
    ignores: ["app/static/common.js", "app/static/charts.js"],
    languageOptions: { sourceType: "module", globals: modules },
    rules: { "no-unused-vars": ["error", { caughtErrors: "none" }] },
  },
  { rules: { "max-len": ["error", { code: 120 }], "no-undef": "error", eqeqeq: ["error", "smart"] } },
];
