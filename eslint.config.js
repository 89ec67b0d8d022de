import neostandard, { resolveIgnoresFromGitignore } from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    noJsx: true,
    ignores: resolveIgnoresFromGitignore()
  }),
  {
    rules: {
      // `any` is allowed in tests and scripts, never in app code (see below)
      '@typescript-eslint/no-explicit-any': 'off',
      // TypeBox idiom: a schema and its Static type share a name; tsc catches real redeclarations.
      '@typescript-eslint/no-redeclare': 'off'
    }
  },
  {
    files: ['src/**/*.ts', 'plugins/**/*.ts', 'routes/**/*.ts'],
    rules: {
      '@typescript-eslint/no-explicit-any': 'error'
    }
  }
]
