/**
 * One resource of the core's pool, as the core sees it: being opened, idle, out, or gone. What a
 * resource is (a PostgreSQL connection, a fake one in the simulation) is the driver's business;
 * the driver's slot class extends this one with what it knows.
 */
export class Slot {
  /** Being opened: counted against the capacity, not yet usable. */
  connecting = true;
  /** Taken out of the pool (closing or closed). */
  removed = false;
  /** When it was last handed back or opened (the core's clock): the idle sweep and the pre-ping's bypass window. */
  lastUsed: number;
  /** When the current checkout began (the core's clock); -1 while not checked out. */
  checkedOutAt = -1;

  constructor(readonly openedAt: number) {
    this.lastUsed = openedAt;
  }
}
