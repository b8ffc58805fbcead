/** `1 entry`, `2 entries`: a count as a person writes it. */
export function counted(count: number, one: string, many: string): string {
  return `${count} ${count === 1 ? one : many}`
}
