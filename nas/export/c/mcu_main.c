/* Cortex-M4 driver under QEMU (mps2-an386, -semihosting): own vector table and reset handler,
 * runs the embedded test images (mcu_images.h), prints each logit's float32 bits in hex, the
 * SysTick ticks per inference and the stack peak (painted stack) through semihosting. */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "mcu_images.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_bottom, __stack_top;
int main(void);

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void put(const char *s) { semihost(0x04, s); } /* SYS_WRITE0 */

static void put_hex(uint32_t v)
{
    char b[10];
    for (int i = 0; i < 8; i++)
        b[i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 15];
    b[8] = ' ';
    b[9] = 0;
    put(b);
}

static void put_dec(uint32_t v)
{
    char b[12];
    int i = 11;
    b[i] = 0;
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(b + i);
}

void nas_reset(void)
{
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20; /* CPACR: CP10, CP11 full access (FPU) */
    __asm__ volatile("dsb\n isb");
    memcpy(&__data_start, &__data_load, (char *)&__data_end - (char *)&__data_start);
    memset(&__bss_start, 0, (char *)&__bss_end - (char *)&__bss_start);
    uint32_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &__stack_bottom; (uint32_t)p < sp - 64; p++)
        *p = 0xA5A5A5A5u; /* paint the stack below the reset handler's frame */
    int rc = main();
    /* SYS_EXIT (AArch32: r1 is the reason): ADP_Stopped_ApplicationExit, else RunTimeErrorUnknown */
    semihost(0x18, (const void *)(uintptr_t)(rc == 0 ? 0x20026 : 0x20023));
    for (;;) {
    }
}

static void fault(void)
{
    put("HardFault\n");
    semihost(0x18, (const void *)0x20023); /* ADP_Stopped_RunTimeErrorUnknown */
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) static const void *vectors[16] = {
    &__stack_top, (void *)nas_reset, (void *)fault, (void *)fault, (void *)fault, (void *)fault, (void *)fault,
};

#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)

/* The images' stride, read from memory: the loop's code is then the same for every input size
 * (an immediate's encoding depends on its value), so nas.cost.mcu prices the driver's code as one
 * constant. In flash (GCC puts a const volatile object in .data otherwise). */
static const volatile uint32_t image_floats __attribute__((section(".rodata.image_floats"))) = NAS_INPUT_SIZE;

int main(void)
{
    static float logits[NAS_NUM_CLASSES];
    const float *image = &nas_mcu_images[0][0];
    for (int i = 0; i < NAS_MCU_IMAGES; i++, image += image_floats) {
        SYST_RVR = 0xFFFFFF;
        SYST_CVR = 0;
        SYST_CSR = 5; /* processor clock, enabled, no interrupt */
        uint32_t t0 = SYST_CVR;
        nas_model_run(image, logits);
        uint32_t t1 = SYST_CVR;
        SYST_CSR = 0;
        put("logits ");
        for (int c = 0; c < NAS_NUM_CLASSES; c++) {
            uint32_t bits;
            memcpy(&bits, &logits[c], 4);
            put_hex(bits);
        }
        put("ticks ");
        put_dec((t0 - t1) & 0xFFFFFF);
        put("\n");
    }
    uint32_t *p = &__stack_bottom;
    while (p < &__stack_top && *p == 0xA5A5A5A5u)
        p++;
    put("stack ");
    put_dec((uint32_t)((char *)&__stack_top - (char *)p));
    put("\n");
    return 0;
}
