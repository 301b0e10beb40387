import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn } from 'typeorm';

@Entity({ name: 'items' })
export class Item {
  @PrimaryGeneratedColumn('identity', { generatedIdentity: 'ALWAYS' })
  id!: number;

  @Column({ type: 'varchar', length: 200 })
  name!: string;

  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' })
  createdAt!: Date;

  /**
   * The Idempotency-Key of the request that created it. Never read back (`select: false`): keys
   * are global to the api, so whoever saw one could replay it.
   */
  @Column({ name: 'idempotency_key', type: 'varchar', length: 128, nullable: true, unique: true, select: false })
  idempotencyKey?: string | null;
}
